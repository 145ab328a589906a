"""The shared prompt computed once (vLLM's prefix caching): a decoder reranker's fused graph with a key/value cache.

Every document of a request shares the prompt's head: the template's prefix (system text) and the query part
(instruction and query). The fused decoder graph (fp32-opt, and the int8 built from it) takes a cache and
returns one:

    input_ids, attention_mask [batch, sequence] (right-padded),
    past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim] per layer (past may be 0)
      -> logits [batch, 1] (logit(positive) - logit(negative) at each row's last real token),
         present.{i}.key / .value [batch, kv_heads, past + sequence, head_dim] (keys after the rotary embedding)

Positions continue after the past. One graph serves three uses: with an empty past it is the single graph's
function (a batch that shares no head); on the head alone (batch 1, empty past) its `present` is the head's
cache; on one document's tokens after that cache it scores the document (ONNX Runtime's CPU
GroupQueryAttention takes a past with several new tokens only for batch 1, so documents run one row at a
time, without padding). The plain fp32 graph (model.onnx) stays cache-free for Triton/TensorRT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export import fusion
from export.errors import ExportError
from export.fusion import FusedGraph
from gateway.families import Family
from gateway.tokenization import Window

INPUTS = ("input_ids", "attention_mask")


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


@dataclass(frozen=True)
class CacheLayout:
    """The key/value inputs and outputs of a cached decoder graph (the manifest's `kv_cache`)."""

    layers: int
    kv_heads: int
    head_dim: int

    def manifest(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "past": "past_key_values.{layer}.key|value [batch, kv_heads, past, head_dim], float32",
            "present": "present.{layer}.key|value [batch, kv_heads, past + sequence, head_dim], float32",
            "dtype": "float32",
        }


def layout_of(config: Any) -> CacheLayout:
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return CacheLayout(int(config.num_hidden_layers), kv_heads, head_dim)


def export_cached(
    family: Family, folder: Path, output: Path, *, positive_id: int, negative_id: int
) -> tuple[FusedGraph, CacheLayout]:
    """Write output: the decoder's fused graph with a key/value cache (inputs past_key_values.*, outputs
    logits and present.*). With an empty past it is the single graph's function."""
    import gc

    import torch

    from export.torch_export import dummy_ids, load_causal_lm

    recipe = family.definition.fusion
    if recipe is None or not recipe.kv_cache or family.template is None:
        raise ExportError(f"prefix reuse is for decoder rerankers, not family {family.family!r}")
    lm = load_causal_lm(folder, recipe.attn_implementation)
    layout = layout_of(lm.config)
    vocabulary = int(lm.config.vocab_size)
    module = _CachedScorer(lm, positive_id, negative_id)
    del lm
    batch, sequence, past = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("past")
    ids = dummy_ids(vocabulary, 2, 9)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    cache = tuple(torch.randn(2, layout.kv_heads, 12, layout.head_dim) for _ in range(2 * layout.layers))
    cache_shape = {0: batch, 2: past}
    fused = fusion.export_fused(
        module, (ids, mask, *cache), output, recipe,
        input_names=[*INPUTS, *past_names(layout.layers)],
        output_names=["logits", *present_names(layout.layers)],
        dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}, tuple([cache_shape] * len(cache))),
    )  # fmt: skip
    del module
    gc.collect()
    return fused, layout


def _torch_module() -> Any:
    import torch

    return torch.nn.Module


class _CachedScorer(_torch_module()):  # type: ignore[misc]
    """logit(positive) - logit(negative) at each row's last real token after a cached head (`past`, possibly
    empty), and the key/value cache of head + these tokens."""

    def __init__(self, lm: Any, positive_id: int, negative_id: int) -> None:
        from export.torch_export import _LastTokenLogitDifference

        super().__init__()
        scorer = _LastTokenLogitDifference(lm, positive_id, negative_id)
        self.body = scorer.body
        self.head = scorer.head
        self.offset = scorer.offset

    def forward(self, input_ids: Any, attention_mask: Any, *past: Any) -> tuple[Any, ...]:
        from transformers import DynamicCache

        from export.torch_export import last_real, row_positions

        cache = DynamicCache()
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        start = past[0].shape[2]
        hidden = self.body(
            input_ids=input_ids, attention_mask=_causal_mask(attention_mask, input_ids.shape[1], start),
            position_ids=row_positions(input_ids, start), past_key_values=cache, use_cache=True,
        ).last_hidden_state  # fmt: skip
        logits = self.head(last_real(hidden, attention_mask))
        if self.offset:
            logits = logits + self.offset
        return (logits, *(t for layer in _layers(cache) for t in layer))


def _causal_mask(attention_mask: Any, length: Any, start: Any) -> Any:
    """A 4-D additive mask [batch, 1, length, start + length]: query i sees the cached head and its own
    tokens up to itself. Right pads come after every real token, so no real token sees one."""
    import torch

    total = start + length
    rows = torch.arange(length, device=attention_mask.device)[:, None] + start
    cols = torch.arange(total, device=attention_mask.device)[None, :]
    keep = (cols <= rows)[None, None, :, :].expand(attention_mask.shape[0], 1, length, total)
    blocked = torch.finfo(torch.float32).min
    return torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, blocked)


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    """(key, value) per layer of a transformers cache, across its API versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def scores_with_heads(path: Path, windows: Sequence[Window], threads: int = 2) -> np.ndarray:
    """What the gateway's prefix-reuse scorer (gateway/backends/prefix_reuse.py) returns for these windows, as
    the gateway's PairTokenizer built them (the cached graph at `path`, see `score_windows`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return score_windows(session, windows)


def score_windows(session: Any, windows: Sequence[Window]) -> np.ndarray:
    """Each window's head (`Window.shared`: the template's prefix and the query part) computed once, from an
    empty past, for the windows in a row that have it, then each window's remaining tokens after that cache, one
    row at a time (the order of gateway/backends/prefix_reuse.py); a window without a head runs the full
    computation from an empty past."""
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    present = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    kv_heads, head_dim = int(past[0].shape[1]), int(past[0].shape[3])
    empty = {i.name: np.zeros((1, kv_heads, 0, head_dim), dtype=np.float32) for i in past}
    cached: dict[bytes, dict[str, np.ndarray]] = {}
    out = np.zeros(len(windows), dtype=np.float64)
    for row, window in enumerate(windows):
        ids = np.asarray(window.ids, dtype=np.int64)[None, :]
        shared = window.shared
        key = ids[0, :shared].tobytes()
        if shared and key not in cached:
            head = ids[:, :shared]
            values = session.run(present, {"input_ids": head, "attention_mask": np.ones_like(head), **empty})
            cached = {key: dict(zip([i.name for i in past], values, strict=True))}  # one query at a time
        rest = ids[:, shared:]
        feed = {"input_ids": rest, "attention_mask": np.ones_like(rest), **(cached[key] if shared else empty)}
        out[row] = float(np.asarray(session.run(["logits"], feed)[0]).reshape(-1)[0])
    return out
