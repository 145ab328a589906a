"""CLI: python -m export --model M --prefilter P --output model_repository [--score-calibration DIR ...]
[--quiet]."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from export.families import template_names

DEFAULT_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"
DEFAULT_PREFILTER = "cross-encoder/ms-marco-TinyBERT-L-2-v2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export cross-encoders to a validated Triton model repository (fp32, int8, fp16 ONNX).",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local folder of the cross-encoder")
    parser.add_argument(
        "--prefilter",
        default=DEFAULT_PREFILTER,
        help="hub id or folder of the CPU prefilter; 'same' = the cross-encoder's int8 file; 'none' = no prefilter",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("model_repository"), help="model repository folder"
    )
    parser.add_argument("--name", default="reranker", help="Triton model name of the cross-encoder")
    parser.add_argument("--prefilter-name", default="prefilter", help="Triton model name of the prefilter")
    parser.add_argument(
        "--max-length", type=int, default=None, help="max tokens per pair (default: the model's)"
    )
    parser.add_argument(
        "--template",
        default=None,
        choices=template_names(),
        help="prompt template of a decoder reranker (Qwen3ForCausalLM / Qwen2ForCausalLM) whose folder does "
        "not say which it is",
    )
    parser.add_argument("--fp32-atol", type=float, help="parity gate: the fp32 bound is max |ONNX - PyTorch| <= "
                        "atol + rtol x the reference's largest magnitude; atol (default: the family's, 1e-4)")  # fmt: skip
    parser.add_argument("--fp32-rtol", type=float, help="parity gate: rtol of the fp32 bound (default: the "
                        "family's, 1e-5; decoders 2e-5)")  # fmt: skip
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of --model")
    parser.add_argument(
        "--int8-full-range",
        action="store_true",
        help="also build full-range (8-bit) int8 weights, slightly more accurate on VNNI/AMX CPUs; the 7-bit "
        "file (the default, accurate on every CPU) is kept beside it for CPUs without VNNI, and on a build "
        "CPU without VNNI only the 7-bit file is built (with a warning)",
    )
    # The flag's former spelling.
    parser.add_argument("--no-int8-reduce-range", dest="int8_full_range", action="store_true",
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="JSON lines of {query, documents[, ranked]}: calibrate the cascade's starting keep into manifest.json",
    )
    parser.add_argument(
        "--calibration-target",
        type=float,
        default=None,
        help="recall@10 the keep must reach (default: gateway's)",
    )
    parser.add_argument(
        "--score-calibration",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv, bm25_top100.jsonl); repeat to pool "
        "several: fit the model's logit -> P(relevant) map into manifest.json (python -m export.score_calibration "
        "does it for an exported repository)",
    )
    parser.add_argument(
        "--score-calibration-queries",
        type=int,
        default=None,
        metavar="N",
        help="a seeded choice of N queries per --score-calibration folder (default: all)",
    )
    parser.add_argument(
        "--fp16-gpu-fusion",
        action="store_true",
        help="fuse the fp16 file of a BERT-like encoder for the CUDA provider (Attention, SkipLayerNorm): 2-3x "
        "faster at shapes it has seen, but each new batch shape costs ~70 ms on onnxruntime-gpu 1.31 (H200), so "
        "only for fixed-shape batches; README, GPU section",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output (CI)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from export import build_repository
    from export.errors import ExportError
    from export.quantize import INT8_SETTINGS
    from export.validate import Thresholds

    try:
        manifests = build_repository(
            args.model,
            args.prefilter,
            args.output,
            name=args.name,
            prefilter_name=args.prefilter_name,
            max_length=args.max_length,
            quiet=args.quiet,
            opset=args.opset,
            revision=args.revision,
            int8=replace(INT8_SETTINGS, reduce_range=not args.int8_full_range),
            template=args.template,
            thresholds=Thresholds(fp32_atol=args.fp32_atol, fp32_rtol=args.fp32_rtol),
            fp16_gpu_fusion=args.fp16_gpu_fusion,
        )
        if args.calibration is not None:
            from export.calibrate import calibrate

            entry = calibrate(
                args.output,
                args.calibration,
                target=args.calibration_target,
                name=args.name,
                prefilter_name=args.prefilter_name,
            )
            if not args.quiet:
                print(
                    f"calibrated cascade keep {entry['keep']} ({entry['recall_at_10_by_keep']})",
                    file=sys.stderr,
                )
        if args.score_calibration:
            score_calibration(args)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        for name, manifest in manifests.items():
            print(summary(name, manifest), file=sys.stderr)
    return 0


def score_calibration(args: argparse.Namespace) -> None:
    """Fit the score calibration of the cross-encoder, and of the prefilter when one was exported (the
    documents it cuts carry its score), on the --score-calibration folders, scored with the exported files
    themselves at the pair length the gateway serves each at (export/score_calibration.py)."""
    from export.score_calibration import calibrate_scores, summary_line
    from gateway.config import Settings

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr, flush=True)

    models = [(args.name, args.max_length)]
    if (args.output / args.prefilter_name / "manifest.json").is_file():
        models.append((args.prefilter_name, Settings.model_fields["prefilter_max_length"].default))
    for name, max_length in models:
        entry = calibrate_scores(
            args.output,
            name,
            args.score_calibration,
            max_queries=args.score_calibration_queries,
            max_length=max_length,
            progress=progress,
        )
        if not args.quiet:
            print(summary_line(name, entry), file=sys.stderr)


def summary(name: str, manifest: dict) -> str:
    """One line per model: family, fp32 parity, the variants written and the ones left out (with why)."""
    figures = manifest["parity"]["figures"]
    fp32 = figures["fp32"]
    parts = [f"{name} ({manifest.get('family', '?')}): fp32 max|diff| {fp32['max_abs_diff']:.2e}"]
    if "bound" in fp32:
        parts[0] += f" (bound {fp32['bound']:.2e})"
    for key in manifest["variants"]:
        if key.startswith("int8") and key in figures:
            parts.append(
                f"{key} Spearman {figures[key]['spearman']:.4f} top-1 {figures[key]['top1_agreement']:.0%}"
            )
    for key, reason in manifest.get("variants_skipped", {}).items():
        parts.append(f"{key} left out ({reason})")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
