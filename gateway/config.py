"""The gateway's settings: one typed object read from `RERANKER_*` environment variables.

Built once at start-up (`load_settings()`) and passed in (`create_app(settings)`); never an import-time
global, so tests build as many differently-configured apps as they like.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from gateway.domain import MAX_CHUNKS_PER_DOC, MIN_MAX_LENGTH
from gateway.endpoints import parse_endpoints


class ConfigurationError(Exception):
    """A bad setting at start-up; the message names the environment variable and the problem."""


# The names the first version of this service used for three of our settings: accepted as aliases of ours.
LEGACY_ALIASES: dict[str, str] = {
    "RERANKER_CACHE_TTL_SECONDS": "cache_ttl_s",
    "RERANKER_REQUEST_TIMEOUT_SECONDS": "request_timeout_s",
    "RERANKER_PRELOAD_MODEL": "preload",
}


Precision = Literal["int8", "fp32"]
Device = Literal["auto", "cpu", "cuda"]


# Batches the CPU lane runs at once by default (RERANKER_CPU_CONCURRENCY).
DEFAULT_CPU_CONCURRENCY = 2


def session_threads(cores: int, concurrency: int) -> int:
    """Intra-op threads of each CPU session when `cores` are shared by `concurrency` batches at once."""
    return max(1, cores // concurrency)


class ModelTable(BaseModel):
    """One served model's table in the models file (`[models.<folder>]`). A key left out takes the flat
    `RERANKER_*` value, so a file holding only `[models.a]` and `[models.b]` serves both with the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aliases: tuple[str, ...] = Field(
        (), description="Other names a request's `model` may use for it (and /v1/models lists)."
    )
    max_length: int | None = Field(
        None, ge=MIN_MAX_LENGTH, description="Tokens per pair (below the model's)."
    )
    cpu_precision: Precision | None = Field(None, description="Variant on the CPU: int8 or fp32.")
    device: Device | None = Field(None, description="auto, cpu or cuda.")
    token_budget: int | None = Field(None, ge=64, description="CPU: padded tokens per inference batch.")
    gpu_token_budget: int | None = Field(None, ge=64, description="GPU / Triton: padded tokens per batch.")
    max_batch_size: int | None = Field(None, ge=1, description="Rows per inference batch at most.")
    default_instruction: str | None = Field(
        None, min_length=1, description="A decoder reranker's instruction when a request brings none."
    )
    request_timeout_s: float | None = Field(None, gt=0, description="This model's request deadline.")
    max_in_flight: int | None = Field(None, ge=1, description="This model's requests processed at once.")
    weight: float = Field(
        1.0,
        gt=0,
        description="Its share of the CPU lane while other models have work waiting (weighted fair queuing "
        "of batches): a model of weight 2 gets twice the inference time of a model of weight 1.",
    )

    def overrides(self) -> dict[str, Any]:
        """The flat settings this table sets for its model."""
        return {key: getattr(self, key) for key in FLAT_PER_MODEL if getattr(self, key) is not None}

    @field_validator("aliases", mode="before")
    @classmethod
    def _one_alias_is_a_list(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value


# The flat settings a model's table may set for that model alone.
FLAT_PER_MODEL = (
    "max_length",
    "cpu_precision",
    "device",
    "token_budget",
    "gpu_token_budget",
    "max_batch_size",
    "request_timeout_s",
    "max_in_flight",
)


class ModelsFile(BaseModel):
    """`RERANKER_MODELS_FILE`, read: its tables by model folder, in the file's order (the first the default)."""

    model_config = ConfigDict(frozen=True)

    path: Path
    models: dict[str, ModelTable]


def read_models_file(path: Path) -> ModelsFile:
    """Parse and validate a models file (TOML, one `[models.<folder>]` table per served model). A problem raises
    ValueError naming the file, the model and the field:
    `models file models.toml: model 'qwen3': max_length: Input should be greater than or equal to 8 (got 4)`."""
    where = f"models file {path}"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: is not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - {"models"})
    if unknown:
        raise ValueError(
            f"{where}: unknown top-level keys {unknown}; each model is a [models.<folder>] table"
        )
    tables = raw.get("models")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"{where}: holds no [models.<folder>] table")
    models: dict[str, ModelTable] = {}
    for name, table in tables.items():
        if "/" in name:
            raise ValueError(f"{where}: model {name!r}: names a folder of the model repository, not a hub id")
        if not isinstance(table, dict):
            raise ValueError(f"{where}: model {name!r}: must be a table ([models.{name}]), not {table!r}")
        try:
            models[name] = ModelTable.model_validate(table)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(part) for part in err["loc"]) or "table"
            got = "" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})"
            raise ValueError(f"{where}: model {name!r}: {field}: {err['msg']}{got}") from None
    owner = dict.fromkeys(models, "")  # every name -> the model it is an alias of ("": its own)
    for name, table in models.items():
        for alias in table.aliases:
            taken = owner.setdefault(alias, name)
            if taken != name:
                other = taken or alias
                raise ValueError(
                    f"{where}: model {name!r}: aliases: {alias!r} is already a name of model {other!r}"
                )
    return ModelsFile(path=path, models=models)


def _models_file_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("models_file", message)


class _ModelSettings(BaseSettings):
    """Which models of the repository are served."""

    model_repository: Path = Field(Path("model_repository"), description="Exported model repository.")
    model_name: str = Field("reranker", min_length=1, description="Cross-encoder folder in the repository.")
    served_model_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra names the model answers to and /v1/models lists (comma-separated), like vLLM's "
        "--served-model-name: clients that check the name (LlamaIndex NVIDIARerank) accept these.",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Cross-encoder folders served by this one service (comma-separated), the first the default; "
        "`all`: every cross-encoder in the repository; empty: RERANKER_MODEL_NAME alone. A request's `model` "
        "picks one by folder name, manifest model_id or alias.",
    )
    prefilter_name: str = Field("prefilter", description="Prefilter folder; empty disables the first stage.")


class _ModelsFileSettings(BaseSettings):
    """Each served model's own settings, from one file (read and validated at start-up)."""

    models_file: Annotated[ModelsFile | None, NoDecode] = Field(
        None,
        description="TOML file with one [models.<folder>] table per served model (aliases, max_length, "
        "cpu_precision, device, token_budget, gpu_token_budget, max_batch_size, default_instruction, "
        "request_timeout_s, max_in_flight, weight); keys left out take the flat RERANKER_* values. Without "
        "RERANKER_MODELS the file's tables are the served models, the first the default.",
    )

    @field_validator("models_file", mode="before")
    @classmethod
    def _read(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str | Path):
            try:
                return read_models_file(Path(value))
            except ValueError as exc:  # the message names the file, the model and the field: keep it as is
                raise _models_file_error(str(exc)) from None
        return value


class _PipelineSettings(BaseSettings):
    """How a request is scored: the cascade, pair lengths, batches, precision, the cache."""

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
    threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads per session (0: the CPU cores shared out among the batches "
        "the CPU lane runs at once, `cpu_concurrency`; at least 1).",
    )
    cpu_concurrency: int = Field(
        DEFAULT_CPU_CONCURRENCY,
        ge=1,
        le=64,
        description="Batches the CPU lane runs at once, over every CPU model (1: one at a time, on every core). "
        "On 2 cores two batches of one thread each beat one batch on two threads (ONNX Runtime's threads meet "
        "at every node), except for a lone batch, which runs on its share of the cores.",
    )
    flush_denormals: bool = Field(
        True,
        description="The threads that run ONNX Runtime on the CPU flush denormal numbers to zero (x86 FTZ/DAZ). "
        "A masked attention (ModernBERT's local layers, padded batches) makes denormals, and the CPU computes "
        "with them on a slow path; scores are the same.",
    )
    cache_size: int = Field(50_000, ge=0, description="Pair scores kept in the cache (0: no cache).")
    cache_ttl_s: float = Field(3600.0, gt=0, description="Seconds a cached pair score stays valid.")


class _ServingSettings(BaseSettings):
    """The HTTP server, its limits and timeouts."""

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


class _TritonSettings(BaseSettings):
    """Triton as the primary backend (local ONNX Runtime stays the fallback)."""

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


class Settings(_ModelSettings, _ModelsFileSettings, _PipelineSettings, _ServingSettings, _TritonSettings):
    """Every knob of the gateway. Environment: `RERANKER_<FIELD>` (e.g. `RERANKER_KEEP=50`)."""

    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore", validate_default=True)

    @field_validator("api_keys", "served_model_names", "models", mode="before")
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
        if self.prefilter_name and self.prefilter_name in (self.model_name, *self.models):
            raise ValueError("prefilter_name must differ from the served models' folders")
        if "all" in self.models and len(self.models) > 1:
            raise ValueError(
                "models: `all` serves every cross-encoder of the repository; name no others beside it"
            )
        for name in self.models:
            if "/" in name:
                raise ValueError(f"models names folders of the model repository, not hub ids ({name!r})")
        if self.models_file is not None:
            self._check_models_file(self.models_file)
        return self

    def _check_models_file(self, file: ModelsFile) -> None:
        where = f"models file {file.path}"
        named = [m for m in self.models if m != "all"]
        for name, table in file.models.items():
            if named and name not in named:
                raise _models_file_error(
                    f"{where}: model {name!r} is not served (RERANKER_MODELS={','.join(self.models)})"
                )
            if self.prefilter_name and name == self.prefilter_name:
                raise _models_file_error(
                    f"{where}: model {name!r}: is the prefilter's folder (prefilter_name)"
                )
            max_length = table.max_length or self.max_length
            if self.chunk_overlap_tokens and max_length and self.chunk_overlap_tokens >= max_length // 2:
                raise _models_file_error(
                    f"{where}: model {name!r}: max_length: {max_length} must be more than twice "
                    f"chunk_overlap_tokens ({self.chunk_overlap_tokens})"
                )

    @property
    def configured_models(self) -> list[str]:
        """The served models as configured, the default first: RERANKER_MODELS (`all`: resolved against the
        repository when the app is built), else the models file's tables, else RERANKER_MODEL_NAME."""
        if self.models:
            return list(self.models)
        if self.models_file is not None:
            return list(self.models_file.models)
        return [self.model_name]

    def model_table(self, name: str) -> ModelTable:
        """`name`'s table in the models file (an empty one, all defaults, when it has none)."""
        if self.models_file is not None and name in self.models_file.models:
            return self.models_file.models[name]
        return ModelTable.model_validate({})

    def for_model(self, name: str) -> Settings:
        """These settings with `name`'s table applied: what each part built for that model reads (its
        LoadOptions, PipelineConfig, PlanLimits, AdmissionConfig). Validated when the file was read."""
        overrides = self.model_table(name).overrides()
        return self.model_copy(update=overrides) if overrides else self

    @property
    def intra_op_threads(self) -> int:
        if self.threads:
            return self.threads
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return session_threads(cores, self.cpu_concurrency)

    @property
    def triton_endpoints(self) -> list[str]:
        """RERANKER_TRITON_URL as a list of host:port entries (scheme stripped); empty when Triton is off."""
        return parse_endpoints(self.triton_url) if self.triton_url else []

    @property
    def effective_triton_model_name(self) -> str:
        return self.triton_model_name or self.model_name


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read the environment; a bad value raises ConfigurationError naming the variable and the rule.

    The first version's variable names (`LEGACY_ALIASES`) are read as aliases of ours; setting both names to
    different values is an error that says which one to keep.
    """
    env = os.environ if environ is None else environ
    aliased: dict[str, str] = {}  # field -> the legacy variable it was read from
    values: dict[str, object] = {}
    for old, field in LEGACY_ALIASES.items():
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
            if err["type"] == "models_file":  # names the file, the model and the field itself
                lines.append(f"  RERANKER_MODELS_FILE: {err['msg']}")
                continue
            lines.append(f"  {name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigurationError("invalid configuration:\n" + "\n".join(lines)) from None
