"""Calibrate the cascade's starting keep from queries with candidate lists (`python -m export ... --calibration F`).

The calibration file is JSON lines, one query each: `{"query": "...", "documents": ["...", ...]}`, plus
`"ranked": false` when the documents are not in retrieval order (default true). Both exported models score
every pair the way the gateway's CPU path does (`cpu_logits`); the smallest keep whose mean recall@10 against
single stage (the fidelity the gateway measures at run time) reaches the target is written into the
cross-encoder's manifest.json as `cascade.keep`, which the gateway starts from when RERANKER_KEEP is not set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from export.errors import ExportError

if TYPE_CHECKING:
    from gateway.cascade import Rule

KEEPS = (10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100)


def read_calibration(path: Path) -> list[dict[str, Any]]:
    """The calibration queries; a malformed line is an ExportError naming the line."""
    items: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ExportError(f"cannot read the calibration file {path}: {exc}") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            query, docs = rec["query"], rec["documents"]
            if not isinstance(query, str) or not isinstance(docs, list) or not docs:
                raise ValueError("query must be a string and documents a non-empty list")
            texts = [d if isinstance(d, str) else str(d["text"]) for d in docs]
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(
                f"{path}:{n}: expected {{'query': str, 'documents': [str, ...]}} ({exc})"
            ) from exc
        items.append({"query": query, "documents": texts, "ranked": bool(rec.get("ranked", True))})
    if not items:
        raise ExportError(f"{path} holds no calibration queries")
    return items


def cpu_logits(
    repository: Path,
    model_name: str,
    items: list[dict[str, Any]],
    max_length: int | None,
    *,
    precision: Literal["int8", "fp32"] = "int8",
) -> list[list[float]]:
    """Every (query, document) logit of `items`, per query in document order, computed the way the gateway
    serves the model on this CPU (`RERANKER_DEVICE=cpu`, `RERANKER_CPU_PRECISION=precision`): the variant it
    would load, its pair tokenizer (template, padding side), windows and batches (one row each for dynamic
    int8). Reads the manifest and runs ONNX Runtime directly: the build step imports no gateway runtime or
    server module."""
    import numpy as np
    import onnxruntime as ort

    from export import decoder_prefix
    from gateway.config import Settings
    from gateway.cpu_features import cpu_flags, cpu_variant, is_dynamic_int8
    from gateway.repository import read_model_spec
    from gateway.tokenization import PairTokenizer, check_inputs

    s = Settings(  # type: ignore[call-arg]
        model_repository=repository,
        model_name=model_name,
        prefilter_name="",
        device="cpu",
        cpu_precision=precision,
        max_length=max_length,
    )
    spec = read_model_spec(repository, model_name)
    check_inputs(spec.input_names)
    variant, _ = cpu_variant(spec, s.cpu_precision, cpu_flags())
    path = spec.variant_path(variant)
    assert path is not None  # cpu_variant picks only files that exist
    length = s.max_length or spec.max_length
    tokenizer = PairTokenizer.from_spec(
        spec, max_length=length
    )  # the template and padding side it serves with
    cached = bool(spec.variants[variant].get("kv_cache"))  # a decoder's cached graph: served head once
    options = ort.SessionOptions()
    options.intra_op_num_threads = s.intra_op_threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    max_rows = 1 if s.int8_row_batches and is_dynamic_int8(variant) else s.max_batch_size
    out: list[list[float]] = []
    for item in items:
        encoded = tokenizer.encode_pairs(
            item["query"], item["documents"], max_chunks=s.max_chunks_per_doc, overlap=s.chunk_overlap_tokens
        )
        windows = encoded.windows
        if cached:  # the gateway's PrefixReuseScorer: the query's head once, each window after its cache
            logits = [float(np.float32(x)) for x in decoder_prefix.score_windows(session, windows).tolist()]
        else:
            logits = _batched_logits(
                session, windows, tokenizer, token_budget=s.token_budget, max_rows=max_rows
            )
        best = [-np.inf] * len(item["documents"])  # a long document's best window wins, as in the gateway
        for window, logit in zip(windows, logits, strict=True):
            best[window.doc] = max(best[window.doc], logit)
        out.append([float(x) for x in best])
    return out


def _batched_logits(
    session: Any, windows: Sequence[Any], tokenizer: Any, *, token_budget: int, max_rows: int
) -> list[float]:
    """Each window's logit, run in the token-budget batches the gateway plans for them."""
    import numpy as np

    from gateway.tokenization import build_batch, plan_batches

    input_names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    output = "logits" if "logits" in outputs else outputs[0]
    found = [0.0] * len(windows)
    for rows in plan_batches([len(w.ids) for w in windows], token_budget=token_budget, max_rows=max_rows):
        batch = build_batch(
            [windows[k] for k in rows], input_names, tokenizer.pad_id, padding_side=tokenizer.padding_side
        )
        scored = np.asarray(session.run([output], batch.inputs)[0], dtype=np.float32)
        for k, logit in zip(rows, scored.reshape(batch.size, -1)[:, 0].tolist(), strict=True):
            found[k] = logit
    return found


def calibrate(
    repository: Path,
    calibration: Path,
    *,
    target: float | None = None,
    rule: Rule | None = None,
    name: str = "reranker",
    prefilter_name: str = "prefilter",
    prefilter_max_length: int | None = None,
) -> dict[str, Any]:
    """Find the starting keep and write it into `<repository>/<name>/manifest.json`; returns the entry."""
    from gateway.cascade import cascade_order, recall_at, select_survivors
    from gateway.config import Settings

    defaults = Settings.model_fields  # what the gateway will run with, unless told otherwise
    target = float(defaults["cascade_target_recall"].default) if target is None else target
    rule = defaults["cascade_rule"].default if rule is None else rule
    if prefilter_max_length is None:
        prefilter_max_length = defaults["prefilter_max_length"].default
    items = read_calibration(calibration)
    if not (repository / prefilter_name / "manifest.json").is_file():
        raise ExportError("calibration needs a prefilter (the export was run with --prefilter none)")
    ce = cpu_logits(repository, name, items, None)
    pre = cpu_logits(repository, prefilter_name, items, prefilter_max_length)
    recalls: dict[int, list[float]] = {keep: [] for keep in KEEPS}
    for item, c, p in zip(items, ce, pre, strict=True):
        single = cascade_order(c, p, range(len(c)))  # every document rescored: single stage
        for keep in KEEPS:
            kept = select_survivors(p, keep, rule=rule, ranked=item["ranked"])
            recalls[keep].append(recall_at(cascade_order(c, p, kept), single, 10))
    recall_by_keep = {keep: round(sum(r) / len(r), 4) for keep, r in recalls.items()}
    chosen_keep = next((k for k in KEEPS if recall_by_keep[k] >= target), KEEPS[-1])
    entry = {
        "keep": chosen_keep,
        "target_recall_at_10": target,
        "rule": rule,
        "queries": len(items),
        "recall_at_10_by_keep": {str(k): v for k, v in recall_by_keep.items()},
        "source": calibration.name,
    }
    manifest_path = repository / name / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["cascade"] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return entry
