"""One request's plan: the request's values and the model's defaults turned, in one place, into the numbers
every later step uses (documents deduplicated, the keep and whether the prefilter runs, the pair length,
windows per document and their overlap, the character cuts, and admission's work estimate).

Admission (gateway/admission.py) plans before it admits, so the estimate it judges by is the work the
pipeline will do; the pipeline then runs the plans it was handed. The estimate is in tokens per stage, counted
with the model's own pair layout (its special tokens, or a decoder's prompt template and instruction); each
stage's measured speed (gateway/cost.py) turns it into seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from gateway.config import Settings
from gateway.domain import MAX_CHUNKS_PER_DOC, RerankQuery, validate_query
from gateway.errors import InputTooLong

CHARS_PER_TOKEN = 4.0  # the estimate before tokenizing: English text averages about 4 characters a token


@dataclass(frozen=True)
class PlanLimits:
    """The server's limits and pair defaults a plan applies (a slice of `Settings`)."""

    max_query_chars: int = 2_000
    max_document_chars: int = 20_000
    max_chunks_per_doc: int = 1
    chunk_overlap_tokens: int = 32

    @classmethod
    def from_settings(cls, s: Settings) -> PlanLimits:
        return cls(s.max_query_chars, s.max_document_chars, s.max_chunks_per_doc, s.chunk_overlap_tokens)


@dataclass(frozen=True)
class PairOptions:
    """How a stage's pairs are built: tokens per pair, windows per document, their overlap, and what to do
    with a longer input. Part of the pair cache's key: equal options give equal scores."""

    max_length: int
    max_chunks: int
    overlap: int
    truncate: bool
    direction: Literal["right", "left"]
    instruction: str | None = None  # a decoder's task instruction (None: the model's default)

    def cache_namespace(self, model_version: str) -> str:
        return (
            f"{model_version}|{self.max_length}|{self.max_chunks}|{self.overlap}|"
            f"{self.direction}|{self.truncate}|{self.instruction}"
        )


@dataclass(frozen=True)
class StageWindows:
    """What a plan needs of the loaded stages: their pair lengths (None: no prefilter loaded) and the tokens a
    pair costs beyond its query and document (the tokenizer's `special_tokens`: [CLS]/[SEP], or a decoder's
    prompt template)."""

    reranker: int
    prefilter: int | None
    takes_instruction: bool = False  # the cross-encoder has a prompt template (a decoder reranker)
    reranker_specials: int = 3
    prefilter_specials: int = 3
    default_instruction: str | None = None  # what a decoder's prompt carries when a request brings none


@dataclass(frozen=True)
class WorkEstimate:
    """A plan's work before tokenizing, in tokens per stage (admission prices each at its stage's speed)."""

    reranker: float = 0.0
    prefilter: float = 0.0

    def __add__(self, other: WorkEstimate) -> WorkEstimate:
        return WorkEstimate(self.reranker + other.reranker, self.prefilter + other.prefilter)

    @property
    def tokens(self) -> float:
        return self.reranker + self.prefilter


@dataclass(frozen=True)
class RequestPlan:
    """A query fitted to the limits, its distinct documents, and every resolved option."""

    query: RerankQuery  # after the character cuts
    unique: tuple[str, ...]  # distinct documents, in order of first occurrence
    doc_to_unique: tuple[int, ...]  # request index -> unique index
    origin: tuple[int, ...]  # unique index -> the request's index of its first occurrence
    keep: int  # prefilter survivors (0: single stage)
    ranked: bool  # the input counts as best first
    use_prefilter: bool
    reranker_pairs: PairOptions
    prefilter_pairs: PairOptions | None
    notes: tuple[str, ...]  # warnings from fitting the request to the limits
    shift: dict[int, int]  # request index -> characters cut from a document's start (left truncation)
    work: WorkEstimate  # the work admission judges by

    def shifted(self, index: int, chunk: tuple[int, int] | None) -> tuple[int, int] | None:
        """A window's character offsets in the document as sent (before a left cut)."""
        by = self.shift.get(index, 0)
        return chunk if chunk is None or not by else (chunk[0] + by, chunk[1] + by)


def plan_request(
    q: RerankQuery, limits: PlanLimits, windows: StageWindows, keep: tuple[int, bool]
) -> RequestPlan:
    """`keep`: the keep this query runs with and whether its input counts as ranked (the cascade's
    KeepPolicy decides them). Raises ValidationFailed / InputTooLong for a query that breaks the rules."""
    validate_query(q)
    fitted, notes, shift = fit_to_limits(q, limits)
    index: dict[str, int] = {}
    doc_to_unique = tuple(index.setdefault(doc, len(index)) for doc in fitted.documents)
    origin = [-1] * len(index)
    for i, u in enumerate(doc_to_unique):
        if origin[u] < 0:
            origin[u] = i
    if fitted.instruction is not None and not windows.takes_instruction:
        notes.append("instruction was ignored: this model has no prompt template")
        fitted = replace(fitted, instruction=None)
    n_keep, ranked = keep
    use_prefilter = windows.prefilter is not None and n_keep > 0 and len(index) > n_keep
    reranker_pairs = PairOptions(
        max_length=min(fitted.max_length or windows.reranker, windows.reranker),
        max_chunks=min(fitted.max_chunks_per_doc or limits.max_chunks_per_doc, MAX_CHUNKS_PER_DOC),
        overlap=limits.chunk_overlap_tokens if fitted.overlap_tokens is None else fitted.overlap_tokens,
        truncate=fitted.truncate,
        direction=fitted.truncation_direction,
        instruction=fitted.instruction,
    )
    prefilter_pairs = None
    if use_prefilter:
        assert windows.prefilter is not None
        # An internal first cut whose window is narrower than the model's: it always truncates.
        prefilter_pairs = PairOptions(windows.prefilter, 1, 0, True, fitted.truncation_direction)
    plan = RequestPlan(
        query=fitted,
        unique=tuple(index),
        doc_to_unique=doc_to_unique,
        origin=tuple(origin),
        keep=n_keep,
        ranked=ranked,
        use_prefilter=use_prefilter,
        reranker_pairs=reranker_pairs,
        prefilter_pairs=prefilter_pairs,
        notes=tuple(notes),
        shift=shift,
        work=WorkEstimate(),
    )
    return replace(plan, work=estimate_work(plan, windows))


def estimate_work(plan: RequestPlan, windows: StageWindows) -> WorkEstimate:
    """The plan's tokens before tokenizing, per stage: characters / 4 of the query (and of a decoder's
    instruction) and of each distinct document, plus the stage's own tokens per pair, each pair capped at its
    scored windows; a prefilter pass over every document, then the cross-encoder on the `keep` longest."""
    query = len(plan.query.query) / CHARS_PER_TOKEN
    opts = plan.reranker_pairs
    instruction = opts.instruction or windows.default_instruction
    own = float(windows.reranker_specials)
    if windows.takes_instruction and instruction:
        own += len(instruction) / CHARS_PER_TOKEN
    cap = opts.max_length * opts.max_chunks
    pairs = [min(query + len(d) / CHARS_PER_TOKEN + own, cap) for d in plan.unique]
    prefilter = 0.0
    if plan.use_prefilter and plan.prefilter_pairs is not None:
        limit = plan.prefilter_pairs.max_length
        prefilter = sum(
            min(query + len(d) / CHARS_PER_TOKEN + windows.prefilter_specials, limit) for d in plan.unique
        )
        pairs = sorted(pairs)[-plan.keep :]
    return WorkEstimate(reranker=sum(pairs), prefilter=prefilter)


def fit_to_limits(q: RerankQuery, limits: PlanLimits) -> tuple[RerankQuery, list[str], dict[int, int]]:
    """Bring a request within the character limits and the chunk maximum.

    The character limits bound memory (far above what a window can use): with truncation on, a longer
    query or document is cut to them in the truncation direction and a warning says so; with truncation
    off, InputTooLong names the document's index and the limit. Also returns, per document cut from its
    start, how many characters were cut (to report chunk offsets in the document as sent).
    """
    notes: list[str] = []
    shift: dict[int, int] = {}
    left = q.truncation_direction == "left"
    query = q.query
    if len(query) > limits.max_query_chars:
        if not q.truncate:
            raise InputTooLong(
                f"the query has {len(query)} characters; the limit max_query_chars is "
                f"{limits.max_query_chars} (truncation is off)",
                limit="max_query_chars",
                value=limits.max_query_chars,
            )
        query = query[-limits.max_query_chars :] if left else query[: limits.max_query_chars]
        notes.append(f"the query was cut to max_query_chars ({limits.max_query_chars} characters)")
    limit = limits.max_document_chars
    documents = list(q.documents)
    cut = 0
    for i, doc in enumerate(documents):
        if len(doc) <= limit:
            continue
        if not q.truncate:
            raise InputTooLong(
                f"document {i} has {len(doc)} characters; the limit max_document_chars is {limit} "
                "(truncation is off)",
                limit="max_document_chars",
                value=limit,
            )
        cut += 1
        if left:
            shift[i] = len(doc) - limit
            documents[i] = doc[-limit:]
        else:
            documents[i] = doc[:limit]
    if cut:
        notes.append(f"{cut} document(s) were cut to max_document_chars ({limit} characters)")
    chunks = q.max_chunks_per_doc
    if chunks is not None and chunks > MAX_CHUNKS_PER_DOC:
        notes.append(
            f"max_chunks_per_doc {chunks} is above the server's maximum {MAX_CHUNKS_PER_DOC}; "
            f"{MAX_CHUNKS_PER_DOC} were used"
        )
        chunks = MAX_CHUNKS_PER_DOC
    if query is q.query and not notes:
        return q, notes, shift
    return replace(q, query=query, documents=tuple(documents), max_chunks_per_doc=chunks), notes, shift
