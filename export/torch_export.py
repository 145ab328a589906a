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
- last-token-difference (decoder): the causal LM's body, the hidden state at each row's last real token
                            (right padding, the family's; a left-padded row works too) times ONE row,
                            lm_head[positive] - lm_head[negative]: logit(yes) - logit(no) without a
                            vocabulary-sized output.

`export_fused` writes the same function through the dynamo exporter and onnxscript's ONNX Runtime fusions, the
way the family's `FusionRecipe` says (export/fusion.py): the fp32-opt file of ModernBERT and the decoders.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from export import decoder_prefix, fusion, onnx_export
from export.decoder_prefix import CacheLayout
from export.errors import ExportError
from export.fusion import FusedGraph
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
    args = dummy_inputs(family, folder, names)
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


def dummy_inputs(family: Family, folder: Path, names: Sequence[str]) -> tuple[Any, ...]:
    """Example inputs to trace: 2 rows of ids from the model's vocabulary, the second padded on the family's
    side (so no all-ones shortcut is traced)."""
    import torch

    batch, length = 2, _DUMMY_LENGTH
    ids = dummy_ids(_vocab_size(folder), batch, length)
    mask = torch.ones(batch, length, dtype=torch.long)
    if family.padding_side == "left":
        mask[1, :5] = 0
    else:
        mask[1, -5:] = 0
    dummy = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(dummy[n] for n in names)


def export_fused(
    family: Family,
    folder: Path,
    output: Path,
    *,
    positive_id: int | None,
    negative_id: int | None,
) -> tuple[FusedGraph, CacheLayout | None]:
    """Write output: the family's graph fused for ONNX Runtime (export.fusion), same inputs and outputs as
    export_fp32's plus, where the recipe says so, a key/value cache (export.decoder_prefix); ExportError when
    the family has no recipe or the fusions did not happen."""
    import torch

    recipe = family.definition.fusion
    if recipe is None:
        raise ExportError(f"no fusion recipe for family {family.family!r}")
    if recipe.kv_cache:
        if positive_id is None or negative_id is None:
            raise ExportError("a decoder export needs the positive and negative token ids")
        return decoder_prefix.export_cached(
            family, folder, output, positive_id=positive_id, negative_id=negative_id
        )
    names = input_names(family, folder)
    wrapper = build_wrapper(family, folder, positive_id, negative_id, recipe.attn_implementation)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = tuple({0: batch, 1: sequence} for _ in names)
    fused = fusion.export_fused(
        wrapper, dummy_inputs(family, folder, names), output, recipe,
        input_names=names, output_names=["logits"], dynamic_shapes=shapes,
    )  # fmt: skip
    return fused, None


def build_wrapper(
    family: Family,
    folder: Path,
    positive_id: int | None,
    negative_id: int | None,
    attn_implementation: str = "eager",
) -> Any:
    """The torch module whose forward takes the graph's inputs positionally and returns `logits` [batch, 1]:
    the builder of the family's score head (`attn_implementation`: the transformers attention it traces;
    eager, so no data-dependent mask shortcut is traced)."""
    builder = _WRAPPERS.get(family.head.kind)
    if builder is None:
        raise ExportError(f"no torch exporter for the {family.head.kind} head of family {family.family!r}")
    return builder(family, folder, positive_id, negative_id, attn_implementation)


def _classifier_wrapper(
    family: Family, folder: Path, positive_id: int | None, negative_id: int | None, attn_implementation: str
) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attn_implementation
    ).eval()
    return _Classifier(model)


def _module_stack_wrapper(
    family: Family, folder: Path, positive_id: int | None, negative_id: int | None, attn_implementation: str
) -> Any:
    return _ModuleStack(load_st_crossencoder(folder), input_names(family, folder))


def _last_token_wrapper(
    family: Family, folder: Path, positive_id: int | None, negative_id: int | None, attn_implementation: str
) -> Any:
    return _LastTokenLogitDifference(
        load_causal_lm(folder, attn_implementation), *_ids(positive_id, negative_id)
    )


def load_causal_lm(folder: Path, attn_implementation: str = "eager") -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attn_implementation
    ).eval()


def _ids(positive_id: int | None, negative_id: int | None) -> tuple[int, int]:
    if positive_id is None or negative_id is None:
        raise ExportError("a decoder export needs the positive and negative token ids")
    return positive_id, negative_id


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
        positions = row_positions(input_ids)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits


class _ModuleStack(_torch_module()):  # type: ignore[misc]
    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: Any) -> Any:
        return st_scores(self.model, dict(zip(self.names, tensors, strict=True)))


class _LastTokenLogitDifference(_torch_module()):  # type: ignore[misc]
    """logit(positive) - logit(negative) at each row's last real token: body -> hidden state -> one lm_head
    row."""

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
        hidden = self.body(
            input_ids=input_ids, attention_mask=mask, position_ids=row_positions(input_ids), use_cache=False
        ).last_hidden_state
        logits = self.head(last_real(hidden, attention_mask))
        return logits + self.offset if self.offset else logits


def row_positions(input_ids: Any, start: Any = 0) -> Any:
    """Position ids [batch, sequence] counting from `start` in every row: explicit per row, because ONNX
    Runtime's fused RotaryEmbedding and GroupQueryAttention read one row of positions per batch row."""
    import torch

    batch, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device, dtype=torch.long) + start
    return positions[None, :].expand(batch, length)


def last_real(hidden: Any, attention_mask: Any) -> Any:
    """Each row's hidden state at its last real token [batch, hidden], whichever side it was padded on:
    the largest position whose mask is 1."""
    import torch

    positions = torch.arange(hidden.shape[1], device=hidden.device, dtype=attention_mask.dtype)
    last = (attention_mask * positions[None, :]).amax(dim=1)
    index = last[:, None, None].expand(-1, 1, hidden.shape[2])
    return hidden.gather(1, index).squeeze(1)


_WRAPPERS: dict[HeadKind, Callable[[Family, Path, int | None, int | None, str], Any]] = {
    "classifier": _classifier_wrapper,
    "module-stack": _module_stack_wrapper,
    "last-token-difference": _last_token_wrapper,
}
