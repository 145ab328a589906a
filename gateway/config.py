"""The gateway's settings: one typed object read from `RERANKER_*` environment variables.

Built once at start-up (`load_settings()`) and passed in (`create_app(settings)`); never an import-time
global, so tests build as many differently-configured apps as they like.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.addresses import strip_scheme
from gateway.domain import MAX_CHUNKS_PER_DOC, MIN_MAX_LENGTH


class ConfigurationError(Exception):
    """A bad setting at start-up; the message names the environment variable and the problem."""


# The names seed 000 used for three of our settings: accepted as aliases of ours.
SEED_ALIASES: dict[str, str] = {
    "RERANKER_CACHE_TTL_SECONDS": "cache_ttl_s",
    "RERANKER_REQUEST_TIMEOUT_SECONDS": "request_timeout_s",
    "RERANKER_PRELOAD_MODEL": "preload",
}


class Settings(BaseSettings):
    """Every knob of the gateway. Environment: `RERANKER_<FIELD>` (e.g. `RERANKER_KEEP=50`)."""

    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore", validate_default=True)

    # --- models -------------------------------------------------------------------------------
    model_repository: Path = Field(Path("model_repository"), description="Exported model repository.")
    model_name: str = Field("reranker", min_length=1, description="Cross-encoder folder in the repository.")
    served_model_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra names the model answers to and /v1/models lists (comma-separated), like vLLM's "
        "--served-model-name: clients that check the name (LlamaIndex NVIDIARerank) accept these.",
    )
    prefilter_name: str = Field("prefilter", description="Prefilter folder; empty disables the first stage.")
    model: str = Field(
        "cross-encoder/ms-marco-MiniLM-L-6-v2",
        description="Export source of the cross-encoder (hub id or local folder), used by `make serve` "
        "when the repository is missing.",
    )
    prefilter: str = Field(
        "cross-encoder/ms-marco-TinyBERT-L-2-v2",
        description="Export source of the prefilter (hub id, local folder, `same` or `none`), used by "
        "`make serve` when the repository is missing.",
    )

    # --- pipeline -----------------------------------------------------------------------------
    keep: int = Field(
        70,
        ge=0,
        description="Prefilter survivors the cross-encoder rescores when the cascade runs (ranked input, or "
        "RERANKER_CASCADE_UNRANKED=prefilter); the adaptive keep starts here (0: single stage). Per request: `keep`.",
    )
    cascade_input_ranked: bool = Field(
        False,
        description="Server default of the request field `ranked_input`: the documents arrive best first "
        "(as retrievers send them), so their order helps choose the prefilter's survivors.",
    )
    cascade_rule: Literal["prefilter", "input", "union", "rrf"] = Field(
        "rrf",
        description="How ranked input chooses its survivors: prefilter top-k, the caller's first k, their "
        "union, or reciprocal-rank fusion (unranked input always uses the prefilter's top-k).",
    )
    cascade_unranked: Literal["single-stage", "prefilter"] = Field(
        "single-stage",
        description="Unranked input without a per-request `keep`: the cross-encoder on every document, or "
        "the prefilter's top-k (faster, but with the stand-in prefilter it lost 0.02-0.06 nDCG@10).",
    )
    cascade_sample_rate: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Share of cascaded requests whose cut documents are also scored in the background (when "
        "idle) to measure recall@10 against single stage (0: off).",
    )
    cascade_target_recall: float = Field(
        0.85,
        ge=0.0,
        le=1.0,
        description="Adaptive keep: grow keep when the measured recall@10 falls below this, shrink it when "
        "comfortably above (0: keep stays fixed).",
    )
    cascade_keep_min: int = Field(10, ge=1, description="Adaptive keep never goes below this.")
    cascade_keep_max: int = Field(100, ge=1, description="Adaptive keep never goes above this.")
    int8_row_batches: bool = Field(
        True,
        description="Score each pair in a batch of its own on the CPU int8 path: dynamic quantization scales "
        "activations per batch, so batched neighbours (and padding) would change a pair's score.",
    )
    max_length: int | None = Field(
        None, ge=MIN_MAX_LENGTH, description="Cross-encoder pair length in tokens (None: model's)."
    )
    prefilter_max_length: int | None = Field(
        128,
        ge=MIN_MAX_LENGTH,
        description="Prefilter pair length in tokens (None: model's; it was trained at 128).",
    )
    max_chunks_per_doc: int = Field(
        1,
        ge=1,
        le=MAX_CHUNKS_PER_DOC,
        description="Windows a long document is split into (best window wins); 1: truncate.",
    )
    chunk_overlap_tokens: int = Field(32, ge=0, description="Overlap between consecutive document windows.")
    cpu_precision: Literal["int8", "fp32"] = Field(
        "int8", description="Cross-encoder variant on the CPU: int8 (fast) or fp32 (reference quality)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when a GPU with enough free memory is present, else CPU."
    )
    gpu_memory_margin_mb: int = Field(1024, ge=0, description="Free GPU memory kept beyond the model's need.")
    token_budget: int = Field(
        512,
        ge=64,
        description="CPU: padded tokens per inference batch (rows x longest pair). Small batches of "
        "length-sorted pairs measured fastest on the CPU (less padding, attention fits the cache).",
    )
    gpu_token_budget: int = Field(16384, ge=64, description="The same bound for batches run on the GPU.")
    max_batch_size: int = Field(64, ge=1, description="Rows per inference batch at most.")
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads per session (0: CPU cores).")
    cache_size: int = Field(50_000, ge=0, description="Pair scores kept in the cache (0: no cache).")
    cache_ttl_s: float = Field(3600.0, gt=0, description="Seconds a cached pair score stays valid.")

    # --- serving ------------------------------------------------------------------------------
    request_timeout_s: float = Field(30.0, gt=0, description="A request running longer answers 504.")
    preload: bool = Field(True, description="Load the models at start-up (False: the first request loads).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_documents: int = Field(1000, ge=1, description="Documents per query.")
    max_pairs: int = Field(
        4000,
        ge=1,
        description="(query, document) pairs per request, over all its queries (`/v1/score` N:N, "
        "`/v1/rerank/batch`).",
    )
    max_document_chars: int = Field(
        20_000,
        ge=1,
        description="Characters per document: a longer one is cut to it when truncating (bounds memory; far "
        "more than a window uses), refused naming its index when not.",
    )
    max_query_chars: int = Field(2_000, ge=1, description="Characters of the query (the same rule).")
    max_body_bytes: int = Field(10_000_000, ge=1024, description="Request body size.")
    max_in_flight: int = Field(
        16,
        ge=1,
        description="Requests processed at once; more wait in the queue while their work can finish within "
        "request_timeout_s (admission by queued tokens), else answer 429 with Retry-After.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted API keys, comma-separated (empty: auth off)."
    )

    # --- Triton (optional primary backend, local ONNX Runtime stays the fallback) --------------
    triton_url: str | None = Field(
        None,
        description="Triton endpoints, host:port, comma-separated (e.g. localhost:8001), or one DNS name "
        "resolving to several addresses such as a headless Service (None: off).",
    )
    triton_balance: Literal["least_outstanding", "round_robin"] = Field(
        "least_outstanding",
        description="How batches are spread over the healthy Triton endpoints: the one with the fewest rows "
        "in flight, or each in turn.",
    )
    triton_resolve_s: float = Field(
        30.0, gt=0, description="Seconds between DNS re-resolutions of Triton endpoint names."
    )
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_model_name: str | None = Field(None, description="Model name in Triton (default: model_name).")
    triton_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds one Triton call may take before its batch is scored locally instead. Keep it "
        "below RERANKER_REQUEST_TIMEOUT_S; raise both for a CPU-only Triton, which needs tens of seconds for "
        "a 64 x 512 batch.",
    )
    fallback_reprobe_s: float = Field(
        5.0, gt=0, description="After a primary backend fails, seconds between readiness re-probes."
    )

    @field_validator("api_keys", "served_model_names", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("model_name")
    @classmethod
    def _folder_not_hub_id(cls, value: str) -> str:
        if "/" in value:
            raise ValueError(
                f"names the cross-encoder's folder in the model repository (default 'reranker'), not a hub "
                f"id: export {value} with `make export MODEL={value}` (or RERANKER_MODEL={value} for "
                f"`make serve`), leave RERANKER_MODEL_NAME unset, and set RERANKER_SERVED_MODEL_NAMES={value} "
                "to answer under that name"
            )
        return value

    @field_validator("triton_url", "triton_model_name", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("triton_url")
    @classmethod
    def _endpoints(cls, value: str | None) -> str | None:
        if value is not None:
            parse_endpoints(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if (
            self.chunk_overlap_tokens
            and self.max_length
            and self.chunk_overlap_tokens >= self.max_length // 2
        ):
            raise ValueError("chunk_overlap_tokens must be below half of max_length")
        if self.cascade_keep_min > self.cascade_keep_max:
            raise ValueError("cascade_keep_min must not exceed cascade_keep_max")
        if self.prefilter_name and self.prefilter_name == self.model_name:
            raise ValueError("prefilter_name must differ from model_name")
        return self

    @property
    def intra_op_threads(self) -> int:
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1

    @property
    def triton_endpoints(self) -> list[str]:
        """RERANKER_TRITON_URL as a list of host:port entries (scheme stripped); empty when Triton is off."""
        return parse_endpoints(self.triton_url) if self.triton_url else []

    @property
    def effective_triton_model_name(self) -> str:
        return self.triton_model_name or self.model_name


def parse_endpoints(value: str) -> list[str]:
    """`a:8001, grpc://b:8001` -> ["a:8001", "b:8001"]; a missing or bad port raises ValueError."""
    endpoints = []
    for raw in value.split(","):
        entry = strip_scheme(raw.strip())
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Triton endpoint {raw.strip()!r} must be host:port (e.g. triton:8001)")
        if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
            raise ValueError(f"Triton endpoint {raw.strip()!r}: write an IPv6 address as [addr]:port")
        if entry not in endpoints:
            endpoints.append(entry)
    if not endpoints:
        raise ValueError("no Triton endpoint given (leave it unset to turn Triton off)")
    return endpoints


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read the environment; a bad value raises ConfigurationError naming the variable and the rule.

    Seed 000's variable names (`SEED_ALIASES`) are read as aliases of ours; setting both names to
    different values is an error that says which one to keep.
    """
    env = os.environ if environ is None else environ
    aliased: dict[str, str] = {}  # field -> the seed variable it was read from
    values: dict[str, object] = {}
    for old, field in SEED_ALIASES.items():
        if old not in env:
            continue
        ours = f"RERANKER_{field.upper()}"
        if ours in env and env[ours] != env[old]:
            raise ConfigurationError(
                f"invalid configuration:\n  {old}: conflicts with {ours} (got {env[old]!r} and "
                f"{env[ours]!r}); set only {ours}"
            )
        values[field] = env[old]
        aliased[field] = old
    values.update(overrides)
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"]) or "settings"
            name = f"RERANKER_{field.upper()}" if err["loc"] else "settings"
            if field in aliased:
                name = f"{aliased[field]} (= {name})"
            lines.append(f"  {name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigurationError("invalid configuration:\n" + "\n".join(lines)) from None
