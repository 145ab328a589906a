"""fp32 ONNX export through torch.onnx for the families optimum cannot export as a reranker.

optimum auto-detects ModernBERT classifiers, sentence-transformers module stacks and decoder rerankers as
`text-ranking` (or not at all) and fails, or exports them as feature extraction and drops the head. Here
each family is wrapped in a small torch module whose forward takes the graph's inputs positionally and
returns `logits` [batch, 1], and torch.onnx (TorchScript exporter: no onnxscript needed) writes it with
dynamic batch and sequence axes. One builder per score head of the family table (gateway/families.py):

- classifier (modernbert):  *ForSequenceClassification(...).logits (eager attention, so no data-dependent
                            mask shortcut is traced);
- module-stack (st-crossencoder): the CrossEncoder's whole module stack (Transformer -> Pooling -> Dense ->
                            LayerNorm -> Dense), its "scores" output;
- last-token-difference (decoder): the causal LM's body, the hidden state at the LAST position (left padding:
                            the last real token of every row) times ONE row, lm_head[positive] -
                            lm_head[negative]: logit(yes) - logit(no) without a vocabulary-sized output.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export import onnx_export
from export.errors import ExportError
from gateway.families import Family, HeadKind

_DUMMY_LENGTH = 24


def input_names(family: Family, folder: Path) -> list[str]:
    """The graph's inputs, in order (the family table's; `token_type_ids` too where the family takes them and
    the encoder has a type vocabulary)."""
    names = list(family.definition.inputs)
    if family.definition.typed_inputs and _uses_token_types(folder):
        names.append("token_type_ids")
    return names


def export_fp32(
    family: Family,
    folder: Path,
    output: Path,
    *,
    opset: int,
    positive_id: int | None,
    negative_id: int | None,
) -> None:
    """Write output (model.onnx, external data beside it when large) for a torch-exported family."""
    import torch

    names = input_names(family, folder)
    wrapper = build_wrapper(family, folder, positive_id, negative_id)
    batch, length = 2, _DUMMY_LENGTH
    ids = dummy_ids(_vocab_size(folder), batch, length)
    mask = torch.ones(batch, length, dtype=torch.long)
    if family.padding_side == "left":
        mask[1, :5] = 0  # a left-padded row, so no all-ones shortcut is traced
    else:
        mask[1, -5:] = 0
    dummy = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    args = tuple(dummy[n] for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".torch-onnx-") as tmp:
        produced = Path(tmp) / "model.onnx"
        try:
            with onnx_export._muted(True), torch.inference_mode():
                torch.onnx.export(
                    wrapper, args, str(produced), input_names=names, output_names=["logits"],
                    dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
                )  # fmt: skip
        except Exception as exc:
            raise ExportError(
                f"ONNX export of {folder} ({family.family}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        onnx_export.save_from(produced, output)
        shutil.rmtree(tmp, ignore_errors=True)
    onnx_export.check_plain(output)


def dummy_ids(vocab_size: int, batch: int, length: int) -> Any:
    """Token ids to trace the graph with, drawn from the model's own vocabulary (any size, fixed seed)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch, length), dtype=torch.long, generator=generator)


def build_wrapper(family: Family, folder: Path, positive_id: int | None, negative_id: int | None) -> Any:
    """The torch module whose forward takes the graph's inputs positionally and returns `logits` [batch, 1]:
    the builder of the family's score head."""
    builder = _WRAPPERS.get(family.head.kind)
    if builder is None:
        raise ExportError(f"no torch exporter for the {family.head.kind} head of family {family.family!r}")
    return builder(family, folder, positive_id, negative_id)


def _classifier_wrapper(
    family: Family, folder: Path, positive_id: int | None, negative_id: int | None
) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return _Classifier(model)


def _module_stack_wrapper(
    family: Family, folder: Path, positive_id: int | None, negative_id: int | None
) -> Any:
    return _ModuleStack(load_st_crossencoder(folder), input_names(family, folder))


def _last_token_wrapper(
    family: Family, folder: Path, positive_id: int | None, negative_id: int | None
) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    if positive_id is None or negative_id is None:
        raise ExportError("a decoder export needs the positive and negative token ids")
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return _LastTokenLogitDifference(lm.eval(), positive_id, negative_id)


def load_st_crossencoder(folder: Path) -> Any:
    """The sentence-transformers CrossEncoder in `folder`, fp32 on the CPU, eval mode."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu", local_files_only=True)
    return model.eval()


def st_scores(model: Any, feed: dict[str, Any]) -> Any:
    """The module stack's "scores" for one padded batch of tensors (features dict in, [batch, 1] out)."""
    features = dict(feed)
    for module in model:
        features = module(features)
    return features["scores"]


def _uses_token_types(folder: Path) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    return int(getattr(config, "type_vocab_size", 0) or 0) > 1


def _vocab_size(folder: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(folder).vocab_size)


def _torch_module() -> Any:
    import torch

    return torch.nn.Module


class _Classifier(_torch_module()):  # type: ignore[misc]
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class _ModuleStack(_torch_module()):  # type: ignore[misc]
    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: Any) -> Any:
        return st_scores(self.model, dict(zip(self.names, tensors, strict=True)))


class _LastTokenLogitDifference(_torch_module()):  # type: ignore[misc]
    """logit(positive) - logit(negative) at the last position: body -> last hidden state -> one lm_head row."""

    def __init__(self, lm: Any, positive_id: int, negative_id: int) -> None:
        import torch

        super().__init__()
        self.body = lm.get_decoder()
        weight = lm.get_output_embeddings().weight.detach()
        row = (weight[positive_id] - weight[negative_id]).unsqueeze(0)  # [1, hidden]
        self.head = torch.nn.Linear(row.shape[1], 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(row)
        bias = getattr(lm.get_output_embeddings(), "bias", None)
        self.offset = float(bias[positive_id] - bias[negative_id]) if bias is not None else 0.0

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        # transformers builds its causal mask with torch.vmap, which the TorchScript tracer cannot export;
        # a 4-D additive mask (causal AND not padding) is passed through as is by every attention kernel.
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        keep = causal[None, None, :, :] & attention_mask[:, None, None, :].bool()
        blocked = torch.finfo(torch.float32).min
        mask = torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, blocked)
        hidden = self.body(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = self.head(hidden[:, -1, :])
        return logits + self.offset if self.offset else logits


_WRAPPERS: dict[HeadKind, Callable[[Family, Path, int | None, int | None], Any]] = {
    "classifier": _classifier_wrapper,
    "module-stack": _module_stack_wrapper,
    "last-token-difference": _last_token_wrapper,
}
