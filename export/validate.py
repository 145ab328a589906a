"""Parity gate: exported variants must score like a separately loaded PyTorch model.

The pairs are generated deterministically from fixed word lists (no data files needed): queries about a
topic, documents that are relevant, partly relevant or off-topic, short or long, and a quarter of them long
enough to be truncated at the model's max length. They are encoded by the gateway's own PairTokenizer (the
family's template, truncation, pad id and padding side, `encode_parity_set`) and batched by its `build_batch`,
so the gate scores exactly the ids the server will build. The gate checks numbers (max |diff| of logits, within
the family's bound: gateway.families.GateBounds) and ranking (Spearman and same best document per query), as
optimum's validation does for numbers only.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from export.errors import ExportError, ParityError
from export.quantize import PORTABLE_INT8_VARIANT
from gateway.families import Family, GateBounds, HeadKind
from gateway.tokenization import PairTokenizer, Window, build_batch

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
    """Bounds set for this export instead of the family's own (`python -m export --fp32-atol/--fp32-rtol`);
    None keeps the family table's (gateway.families.GateBounds, documented there)."""

    fp32_atol: float | None = None
    fp32_rtol: float | None = None
    int8_min_spearman: float | None = None
    int8_min_top1_agreement: float | None = None
    fp16_max_abs_diff: float | None = None
    fp16_min_spearman: float | None = None

    def bounds_for(self, gate: GateBounds) -> GateBounds:
        """The family's bounds with the ones set here in their place."""
        chosen = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(gate, **chosen)


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


@dataclass(frozen=True)
class ParityInputs:
    """The parity pairs as the gateway encodes them: one window each, and how the gateway pads them."""

    windows: list[Window]
    input_names: tuple[str, ...]
    pad_id: int
    padding_side: str

    @property
    def lengths(self) -> list[int]:
        return [len(w.ids) for w in self.windows]

    def ids_sha256(self) -> str:
        """A digest of every pair's token ids and type ids, in order (manifest `parity.ids_sha256`): what a
        server reading the manifest must build for the same pairs."""
        digest = hashlib.sha256()
        for window in self.windows:
            digest.update(json.dumps([window.ids, window.type_ids]).encode())
        return digest.hexdigest()

    def subset(self, indices: Sequence[int]) -> ParityInputs:
        return replace(self, windows=[self.windows[i] for i in indices])

    def batches(self, batch_size: int = 16) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """Length-sorted batches padded by the gateway's build_batch (on `padding_side`, the family's); yields
        (indices, {name: int64 array})."""
        order = sorted(range(len(self.windows)), key=lambda i: len(self.windows[i].ids))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = build_batch(
                [self.windows[i] for i in idx], self.input_names, self.pad_id, padding_side=self.padding_side
            )
            yield idx, batch.inputs


def encode_parity_set(
    tokenizer: PairTokenizer, pairs: Sequence[tuple[str, str]], input_names: Sequence[str]
) -> ParityInputs:
    """Each pair as the server encodes it (`PairTokenizer.encode_pairs`: the family's template and default
    instruction, the document cut to fit max_length, one window), for the graph's inputs."""
    windows = []
    for query, document in pairs:
        [window] = tokenizer.encode_pairs(query, [document]).windows
        windows.append(window)
    return ParityInputs(windows, tuple(input_names), tokenizer.pad_id, tokenizer.padding_side)


def score_all(
    run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: ParityInputs, batch_size: int = 16
) -> np.ndarray:
    out = np.zeros(len(inputs.windows), dtype=np.float64)
    for idx, feed in inputs.batches(batch_size):
        out[idx] = np.asarray(run(feed), dtype=np.float64).reshape(len(idx), -1)[:, 0]
    return out


# Rows per batch of a decoder's PyTorch reference (the other heads score 16 at a time).
REFERENCE_ROWS = 4


@dataclass(frozen=True)
class Reference:
    """What the graph must output, and the magnitude its float32 rounding scales with (GateBounds)."""

    logits: np.ndarray
    scale: float


def reference_logits(
    family: Family,
    model_dir: Path,
    inputs: ParityInputs,
    token_ids: tuple[int, int] | None = None,
) -> Reference:
    """What the graph must output, computed by a separately loaded PyTorch model the way of the family's score
    head: the classifier's logit; the CrossEncoder module stack's "scores"; for a decoder the model card's
    formula on the full causal LM: logit(positive) - logit(negative) of the vocabulary logits at the last
    position of a left-padded batch (sigmoid of it = softmax([negative, positive])[positive]), whatever side
    the graph's own batches are padded on: the same windows, the card's way."""
    reference = _REFERENCES.get(family.head.kind)
    if reference is None:
        raise ExportError(f"no PyTorch reference for the {family.head.kind} head of family {family.family!r}")
    return reference(model_dir, inputs, token_ids)


def pytorch_scores(model_dir: Path, inputs: ParityInputs) -> np.ndarray:
    """Reference logits of a classifier from a freshly loaded model (torch.onnx.export may have altered the
    exported one)."""
    return _classifier_reference(model_dir, inputs, None).logits


def _classifier_reference(
    model_dir: Path, inputs: ParityInputs, token_ids: tuple[int, int] | None
) -> Reference:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()

    logits = score_all(run, inputs)
    return Reference(logits, float(np.abs(logits).max()))


def _module_stack_reference(
    model_dir: Path, inputs: ParityInputs, token_ids: tuple[int, int] | None
) -> Reference:
    import torch

    from export.torch_export import load_st_crossencoder, st_scores

    stack = load_st_crossencoder(model_dir)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return st_scores(stack, {k: torch.from_numpy(v) for k, v in feed.items()}).numpy()

    logits = score_all(run, inputs)
    return Reference(logits, float(np.abs(logits).max()))


def _last_token_reference(
    model_dir: Path, inputs: ParityInputs, token_ids: tuple[int, int] | None
) -> Reference:
    import torch
    from transformers import AutoModelForCausalLM

    if token_ids is None:
        raise ExportError("the decoder reference needs the positive and negative token ids")
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    positive, negative = token_ids
    scale = 0.0

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        nonlocal scale
        with torch.inference_mode():
            # logits_to_keep=1: the card's logits[:, -1, :] without a [batch, sequence, vocabulary] tensor
            # (5 GB for 16 pairs of 512 tokens of a 151k vocabulary)
            tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
            last = lm(**tensors, logits_to_keep=1).logits[:, -1, :]
            terms = last[:, [positive, negative]]
            scale = max(scale, float(terms.abs().max()))
            return (terms[:, 0] - terms[:, 1]).unsqueeze(1).numpy()

    # the model card pads on the left; 4 rows a batch: a causal LM's attention over 512 tokens is the gate's
    # largest allocation (16 rows of a 0.6B decoder held 1.7 GB beside its 2.4 GB of weights)
    logits = score_all(run, replace(inputs, padding_side="left"), batch_size=REFERENCE_ROWS)
    return Reference(logits, scale)


_REFERENCES: dict[HeadKind, Callable[[Path, ParityInputs, tuple[int, int] | None], Reference]] = {
    "classifier": _classifier_reference,
    "module-stack": _module_stack_reference,
    "last-token-difference": _last_token_reference,
}


def onnx_scores(onnx_path: Path, inputs: ParityInputs, threads: int = 2) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return score_all(lambda feed: session.run(["logits"], feed)[0], inputs)


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


FP32_FLAGS = "--fp32-atol / --fp32-rtol"


def variant_problems(key: str, figures: dict[str, float], bounds: GateBounds) -> list[str]:
    """The bounds that one variant's figures miss ([] when it passes the gate), each with the measured figures.

    fp32 figures carry `reference_scale` (the reference's magnitude, GateBounds.fp32_bound); without it the
    bound is the absolute part alone.
    """
    problems = []
    if key in ("fp32", "fp32-opt"):
        scale = float(figures.get("reference_scale", 0.0))
        bound = bounds.fp32_bound(scale)
        if not figures["max_abs_diff"] <= bound:
            problems.append(
                f"{key} ONNX vs PyTorch max |diff| {figures['max_abs_diff']:.3g} > {bound:.3g} "
                f"(= atol {bounds.fp32_atol:g} + rtol {bounds.fp32_rtol:g} x reference scale {scale:.3g}; "
                f"mean |diff| {figures['mean_abs_diff']:.3g}, Spearman {figures['spearman']:.6f}, same top-1 "
                f"{figures['top1_agreement']:.1%}; {FP32_FLAGS} set the bound)"
            )
    elif key in ("int8", PORTABLE_INT8_VARIANT):  # the int8 file and, beside a full-range one, the 7-bit file
        if not figures["spearman"] >= bounds.int8_min_spearman:
            problems.append(f"{key} Spearman vs fp32 {figures['spearman']:.4f} < {bounds.int8_min_spearman}")
        if not figures["top1_agreement"] >= bounds.int8_min_top1_agreement:
            problems.append(
                f"{key} picks the fp32 best document on {figures['top1_agreement']:.1%} of queries "
                f"< {bounds.int8_min_top1_agreement:.0%}"
            )
    elif key == "fp16":
        if not figures["max_abs_diff"] <= bounds.fp16_max_abs_diff:
            problems.append(f"fp16 max |diff| {figures['max_abs_diff']:.3g} > {bounds.fp16_max_abs_diff:g}")
        if not figures["spearman"] >= bounds.fp16_min_spearman:
            problems.append(f"fp16 Spearman {figures['spearman']:.4f} < {bounds.fp16_min_spearman}")
    return problems


def check_gate(name: str, figures: dict[str, dict[str, float]], bounds: GateBounds) -> None:
    """Raise ParityError listing every bound that a variant misses."""
    problems = [p for key, fig in figures.items() for p in variant_problems(key, fig, bounds)]
    if problems:
        raise ParityError(
            f"{name}: parity gate failed: " + "; ".join(problems) + "; no repository was written"
        )


def bounds_dict(bounds: GateBounds) -> dict[str, float]:
    return asdict(bounds)
