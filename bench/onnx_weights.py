"""The PyTorch baseline's weights read back from an exported fp32 ONNX graph, so the GPU bundle need not carry
the model's safetensors beside its ONNX file (the same 87 MiB twice).

torch.onnx keeps every parameter as an initializer under its state-dict name except two cases, both undone here
exactly (no arithmetic, only a transpose, which moves numbers without rounding them):

- a `Linear` applied to a 3-D input becomes `MatMul(x, W^T)` with `W^T` stored under a generated name
  (`onnx::MatMul_302`); its bias follows in an `Add` whose other input carries the state-dict name
  (`...query.bias`), which names the weight (`...query.weight` = the transpose);
- parameters with equal values are stored once and the other names come out of `Identity` nodes.

Whether that gives the whole state dict is a property of the architecture, so it is checked, not assumed:
`check_against_config` builds the model from its config.json and loads the derived weights strictly (every
parameter present, nothing extra, every shape right). tests/unit/bench/test_gpu_bundle.py checks on the tiny
BERT that the derived tensors equal the saved ones bit for bit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Files a sentence-transformers CrossEncoder (and transformers' Auto classes) loads beside the weights.
BASELINE_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


class NotDerivable(Exception):
    """The graph does not give back the whole state dict of its architecture (said which parts are missing)."""


def _generated(name: str) -> bool:
    """Names torch.onnx makes up (`onnx::MatMul_302`, `/bert/.../Constant_output_0`), not state-dict names."""
    return name.startswith(("onnx::", "/")) or not name


def state_dict_from_onnx(path: Path) -> dict[str, np.ndarray]:
    """The state-dict tensors an exported fp32 graph holds, under their PyTorch names."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    graph = model.graph
    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # torch.onnx's de-duplication: other names of the same tensor
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {name: value for name, value in values.items() if not _generated(name)}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in values or not _generated(node.input[1]):
            continue
        adds = [c for c in consumers.get(node.output[0], []) if c.op_type == "Add"]
        if len(adds) != 1:
            continue
        bias = next((i for i in adds[0].input if i.endswith(".bias") and i in values), None)
        if bias is None:
            continue
        state[bias[: -len("bias")] + "weight"] = np.ascontiguousarray(values[node.input[1]].T)
    for name, value in list(state.items()):
        if value.dtype != np.float32:  # int64 buffers (position_ids) are not weights
            del state[name]
    return state


def check_against_config(state: dict[str, np.ndarray], config_dir: Path) -> dict[str, Any]:
    """Load `state` strictly into the model that `config_dir/config.json` describes; NotDerivable if it does not
    fit (a parameter missing, one too many, a shape off). Returns what was checked."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(config_dir)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    persistent_buffers = {name for name, _ in model.named_buffers() if name in expected and name not in state}
    missing = sorted(set(expected) - set(state) - persistent_buffers)
    extra = sorted(set(state) - set(expected))
    wrong = sorted(n for n in set(state) & set(expected) if tuple(state[n].shape) != expected[n])
    if missing or extra or wrong:
        raise NotDerivable(
            f"{config.architectures or config.model_type}: the fp32 graph does not give back its state dict "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, extra {extra[:5]}, "
            f"shape off {wrong[:5]})"
        )
    return {
        "architecture": (config.architectures or [config.model_type])[0],
        "tensors": len(state),
        "parameters": int(sum(v.size for v in state.values())),
        "buffers_left_to_the_model": sorted(persistent_buffers),
    }


@dataclass(frozen=True)
class Baseline:
    folder: Path
    record: dict[str, Any]


def write_baseline(onnx_path: Path, files_dir: Path, target: Path) -> Baseline:
    """A folder sentence-transformers loads: config + tokenizer files from `files_dir`, weights from the graph."""
    from safetensors.numpy import save_file

    state = state_dict_from_onnx(onnx_path)
    record = check_against_config(state, files_dir)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in BASELINE_FILES:
        if (files_dir / name).is_file():
            shutil.copy2(files_dir / name, target / name)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    return Baseline(target, {**record, "from": onnx_path.name})
