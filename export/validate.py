"""Parity gate: exported variants must score like a separately loaded PyTorch model.

The pairs are generated deterministically from fixed word lists (no data files needed): queries about a
topic, documents that are relevant, partly relevant or off-topic, short or long, and a quarter of them long
enough to be truncated at the model's max length. The gate checks numbers (max |diff| of logits) and
ranking (Spearman and same best document per query), as optimum's validation does for numbers only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError, ParityError
from export.families import Family, Template
from export.quantize import PORTABLE_INT8_VARIANT

_TOPICS = [
    ("vitamin D", "bone density", "older adults"),
    ("insulin resistance", "type 2 diabetes", "obese patients"),
    ("statins", "cardiovascular events", "middle-aged men"),
    ("sleep deprivation", "memory consolidation", "students"),
    ("air pollution", "asthma attacks", "children"),
    ("aspirin", "colorectal cancer", "long-term users"),
    ("gut microbiota", "immune response", "infants"),
    ("aerobic exercise", "blood pressure", "hypertensive adults"),
    ("smoking", "lung function", "former smokers"),
    ("folic acid", "neural tube defects", "pregnant women"),
    ("antibiotic overuse", "bacterial resistance", "hospitals"),
    ("coffee consumption", "liver disease", "heavy drinkers"),
    ("mediterranean diet", "cognitive decline", "elderly people"),
    ("tumor suppressor p53", "cell apoptosis", "cancer cell lines"),
    ("BRCA1 mutations", "breast cancer risk", "carriers"),
    ("influenza vaccination", "hospital admissions", "nursing homes"),
    ("omega-3 fatty acids", "depression symptoms", "adolescents"),
    ("high salt intake", "stroke", "rural populations"),
    ("stem cell therapy", "heart failure", "clinical trials"),
    ("ultraviolet radiation", "melanoma", "outdoor workers"),
    ("zinc supplements", "common cold duration", "adults"),
    ("chronic stress", "cortisol levels", "nurses"),
    ("screen time", "myopia", "school children"),
    ("the Berlin wall", "urban population", "East Germany"),
    ("iron deficiency", "fatigue", "teenage girls"),
    ("night shift work", "breast cancer", "female nurses"),
    ("green tea extract", "weight loss", "overweight adults"),
    ("metformin", "cancer incidence", "diabetic patients"),
    ("noise exposure", "hearing loss", "factory workers"),
    ("breastfeeding", "childhood obesity", "toddlers"),
    ("probiotics", "antibiotic-associated diarrhea", "hospital patients"),
    ("mindfulness training", "anxiety", "college students"),
    ("lead exposure", "cognitive development", "young children"),
    ("HPV vaccination", "cervical lesions", "young women"),
    ("red meat intake", "colon cancer", "European cohorts"),
    ("CRISPR editing", "off-target mutations", "human cells"),
    ("heat waves", "mortality", "elderly residents"),
    ("calcium channel blockers", "heart rate", "hypertensive patients"),
    ("social isolation", "dementia risk", "retirees"),
    ("malaria bed nets", "child mortality", "sub-Saharan Africa"),
]
_QUESTIONS = [
    "Does {a} affect {b} in {c}?",
    "What is the effect of {a} on {b}?",
    "{a} and {b} among {c}",
    "How does {a} change the risk of {b} in {c}?",
]
_FILLER_TEXT = (
    "the study measured outcomes over several years and the authors report confidence intervals for each group "
    "while the cohort was followed with questionnaires clinical visits and laboratory tests that were analysed "
    "by independent reviewers who adjusted the models for age sex income and prior disease history"
)
_OFFTOPIC_TEXT = (
    "the railway timetable changes in spring when new trains arrive and the station opens a second platform "
    "for regional services that connect the harbour with the old market square and the football stadium"
)
_FILLER = _FILLER_TEXT.split()
_OFFTOPIC = _OFFTOPIC_TEXT.split()


@dataclass(frozen=True)
class Thresholds:
    """Bounds of the gate (defaults from issue 2)."""

    fp32_max_abs_diff: float = 1e-4
    int8_min_spearman: float = 0.98
    int8_min_top1_agreement: float = 0.95
    fp16_max_abs_diff: float = 0.05
    fp16_min_spearman: float = 0.99


@dataclass(frozen=True)
class ParitySet:
    """Fixed query/document pairs; queries[i] owns the pairs whose group is i."""

    queries: list[str]
    pairs: list[tuple[str, str]]
    groups: list[int]


def build_parity_set(n_queries: int = 40, docs_per_query: int = 4, seed: int = 20261125) -> ParitySet:
    """Deterministic pairs of varied length and relevance (same output on every machine)."""
    rng = random.Random(seed)
    queries: list[str] = []
    pairs: list[tuple[str, str]] = []
    groups: list[int] = []
    for qi in range(n_queries):
        a, b, c = _TOPICS[qi % len(_TOPICS)]
        query = _QUESTIONS[(qi + qi // len(_TOPICS)) % len(_QUESTIONS)].format(a=a, b=b, c=c)
        other = _TOPICS[(qi + 7) % len(_TOPICS)]
        # graded relevance, so that every query has one clearly best document (a near tie would make the
        # top-1 check measure the test set rather than the quantization): with these templates the smallest
        # fp32 best-vs-second margin is 0.07 logits for the 2-layer prefilter stand-in and 1.1 for the L6
        docs = [
            f"{a.capitalize()} and {b} in {c}: {a} strongly affects {b} in {c}. "
            + _words(rng, _FILLER, rng.randint(5, 40)),
            f"The {other[1]} of {c} was studied. " + _words(rng, _FILLER, rng.randint(20, 80)),
            f"{other[0].capitalize()} and {other[1]}. " + _words(rng, _OFFTOPIC, rng.randint(3, 30)),
            # long: truncated at max_length for any BERT-sized model
            f"A report on {other[2]} and {other[1]}. " + _words(rng, _OFFTOPIC + _FILLER, 700),
        ]
        for doc in docs[:docs_per_query]:
            pairs.append((query, doc))
            groups.append(qi)
        queries.append(query)
    return ParitySet(queries=queries, pairs=pairs, groups=groups)


def _words(rng: random.Random, vocab: Sequence[str], n: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(n)) + "."


def tokenize_pairs(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int
) -> list[dict[str, list[int]]]:
    """One encoding per pair, truncating the document only (as the gateway does)."""
    encoded = tokenizer(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        truncation="only_second",
        max_length=max_length,
        padding=False,
        return_token_type_ids=True,
    )
    keys = list(encoded.keys())
    return [{k: encoded[k][i] for k in keys} for i in range(len(pairs))]


def template_encodings(
    template: Template, tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int
) -> list[dict[str, list[int]]]:
    """Decoder pairs as the model cards build them: the prefix's ids, the formatted query + document
    (truncated from its end so that prefix and suffix always fit), the suffix's ids; no special tokens added."""

    def ids(text: str, limit: int | None = None) -> list[int]:
        kwargs = {"truncation": True, "max_length": limit} if limit is not None else {}
        return list(tokenizer(text, add_special_tokens=False, **kwargs)["input_ids"])

    prefix, suffix = ids(template.prefix), ids(template.suffix)
    room = max_length - len(prefix) - len(suffix)
    if room < 8:
        raise ExportError(
            f"max length {max_length} leaves no room for a pair inside the {template.name} prompt"
        )
    out = []
    for query, document in pairs:
        body = ids(template.format_query(query) + template.document.format(document=document), room)
        input_ids = prefix + body + suffix
        out.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids)})
    return out


def batches(
    encodings: list[dict[str, list[int]]],
    input_names: Sequence[str],
    pad_id: int,
    batch_size: int = 16,
    padding_side: str = "right",
):
    """Length-sorted, padded int64 batches; yields (indices, {name: array}). Decoders pad on the left, so
    that the last position of every row is its last real token."""
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encodings[i]["input_ids"]) for i in idx)
        feed = {}
        for name in input_names:
            fill = pad_id if name == "input_ids" else 0
            arr = np.full((len(idx), width), fill, dtype=np.int64)
            for row, i in enumerate(idx):
                seq = encodings[i][name]
                if padding_side == "left":
                    arr[row, width - len(seq) :] = seq
                else:
                    arr[row, : len(seq)] = seq
            feed[name] = arr
        yield idx, feed


def score_all(
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    encodings: list[dict[str, list[int]]],
    input_names: Sequence[str],
    pad_id: int,
    padding_side: str = "right",
) -> np.ndarray:
    out = np.zeros(len(encodings), dtype=np.float64)
    for idx, feed in batches(encodings, input_names, pad_id, padding_side=padding_side):
        out[idx] = np.asarray(run(feed), dtype=np.float64).reshape(len(idx), -1)[:, 0]
    return out


def pytorch_scores(model_dir: Path, encodings, input_names, pad_id: int) -> np.ndarray:
    """Reference logits from a freshly loaded model (torch.onnx.export may have altered the exported one)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()

    return score_all(run, encodings, input_names, pad_id)


def reference_logits(
    family: Family,
    model_dir: Path,
    encodings: list[dict[str, list[int]]],
    input_names: Sequence[str],
    pad_id: int,
    token_ids: tuple[int, int] | None = None,
) -> np.ndarray:
    """What the graph must output, computed by a separately loaded PyTorch model the family's own way:
    the classifier's logit; the CrossEncoder module stack's "scores"; for a decoder the model card's formula
    on the full causal LM: logit(positive) - logit(negative) of the vocabulary logits at the last position of
    a left-padded batch (sigmoid of it = softmax([negative, positive])[positive])."""
    import torch

    if family.family in ("bert", "xlm-roberta", "modernbert"):
        return pytorch_scores(model_dir, encodings, input_names, pad_id)
    if family.family == "st-crossencoder":
        from export.torch_export import load_st_crossencoder, st_scores

        stack = load_st_crossencoder(model_dir)

        def run_stack(feed: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                return st_scores(stack, {k: torch.from_numpy(v) for k, v in feed.items()}).numpy()

        return score_all(run_stack, encodings, input_names, pad_id)
    if family.family == "decoder" and token_ids is not None:
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        positive, negative = token_ids

        def run_lm(feed: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                # logits_to_keep=1: the card's logits[:, -1, :] without a [batch, sequence, vocabulary] tensor
                # (5 GB for 16 pairs of 512 tokens of a 151k vocabulary)
                inputs = {k: torch.from_numpy(v) for k, v in feed.items()}
                last = lm(**inputs, logits_to_keep=1).logits[:, -1, :]
                return (last[:, positive] - last[:, negative]).unsqueeze(1).numpy()

        return score_all(run_lm, encodings, input_names, pad_id, padding_side="left")
    raise ExportError(f"no PyTorch reference for family {family.family!r}")


def onnx_scores(
    onnx_path: Path, encodings, input_names, pad_id: int, threads: int = 2, padding_side: str = "right"
) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return score_all(
        lambda feed: session.run(["logits"], feed)[0], encodings, input_names, pad_id, padding_side
    )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties), without scipy."""
    ra, rb = _rank(a), _rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 1.0


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        mask = x == value
        if mask.sum() > 1:
            ranks[mask] = ranks[mask].mean()
    return ranks


def top1_agreement(reference: np.ndarray, candidate: np.ndarray, groups: Sequence[int]) -> float:
    g = np.asarray(groups)
    same = [np.argmax(reference[g == q]) == np.argmax(candidate[g == q]) for q in np.unique(g)]
    return float(np.mean(same))


def compare(reference: np.ndarray, candidate: np.ndarray, groups: Sequence[int]) -> dict[str, float]:
    diff = np.abs(reference - candidate)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "spearman": round(spearman(reference, candidate), 6),
        "top1_agreement": top1_agreement(reference, candidate, groups),
    }


def variant_problems(key: str, figures: dict[str, float], thresholds: Thresholds) -> list[str]:
    """The bounds that one variant's figures miss ([] when it passes the gate)."""
    problems = []
    if key in ("fp32", "fp32-opt"):
        if not figures["max_abs_diff"] <= thresholds.fp32_max_abs_diff:
            problems.append(
                f"{key} ONNX vs PyTorch max |diff| {figures['max_abs_diff']:.3g} > "
                f"{thresholds.fp32_max_abs_diff:g}"
            )
    elif key in ("int8", PORTABLE_INT8_VARIANT):  # the int8 file and, beside a full-range one, the 7-bit file
        if not figures["spearman"] >= thresholds.int8_min_spearman:
            problems.append(
                f"{key} Spearman vs fp32 {figures['spearman']:.4f} < {thresholds.int8_min_spearman}"
            )
        if not figures["top1_agreement"] >= thresholds.int8_min_top1_agreement:
            problems.append(
                f"{key} picks the fp32 best document on {figures['top1_agreement']:.1%} of queries "
                f"< {thresholds.int8_min_top1_agreement:.0%}"
            )
    elif key == "fp16":
        if not figures["max_abs_diff"] <= thresholds.fp16_max_abs_diff:
            problems.append(
                f"fp16 max |diff| {figures['max_abs_diff']:.3g} > {thresholds.fp16_max_abs_diff:g}"
            )
        if not figures["spearman"] >= thresholds.fp16_min_spearman:
            problems.append(f"fp16 Spearman {figures['spearman']:.4f} < {thresholds.fp16_min_spearman}")
    return problems


def check_gate(name: str, figures: dict[str, dict[str, float]], thresholds: Thresholds) -> None:
    """Raise ParityError listing every bound that a variant misses."""
    problems = [p for key, fig in figures.items() for p in variant_problems(key, fig, thresholds)]
    if problems:
        raise ParityError(
            f"{name}: parity gate failed: " + "; ".join(problems) + "; no repository was written"
        )


def thresholds_dict(thresholds: Thresholds) -> dict[str, float]:
    return asdict(thresholds)
