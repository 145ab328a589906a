"""What this CPU can run: its feature flags, and which CPU variant of an exported model it should serve.

Shared by the gateway's loader and the build step (the export decides which int8 file it can validate here,
calibration scores with the file the gateway will serve), so it imports nothing but the manifest reader:
no runtime, no server module.
"""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ModelRepositoryError
from gateway.repository import ModelSpec

# Preference order of the CPU variants: int8 first when asked for, the fused fp32 graph before the plain one.
INT8_ORDER = ("int8", "int8-7bit", "fp32-opt", "fp32")
FP32_ORDER = ("fp32-opt", "fp32")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This CPU's feature flags, to check an int8 file's `requires_cpu_flags` (empty off Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def is_dynamic_int8(variant: str) -> bool:
    """The dynamically quantized files (7-bit or full range): their activation scale is per batch tensor."""
    return variant.startswith("int8")


def cpu_variant(
    spec: ModelSpec, precision: str, flags: frozenset[str] | None = None
) -> tuple[str, str | None]:
    """The CPU variant to load, and why a preferred one was passed over (None when none was).

    `flags` are this CPU's feature flags (None: not checked). An int8 variant whose manifest entry lists
    `requires_cpu_flags` is skipped unless the CPU has one of them: full-range int8 loses accuracy silently
    on AVX2 without VNNI.
    """
    order = INT8_ORDER if precision == "int8" else FP32_ORDER
    passed_over: list[str] = []
    for variant in order:
        path = spec.variant_path(variant)
        if not path:
            continue
        required = spec.variants[variant].get("requires_cpu_flags") or []
        if flags is not None and required and not flags & set(required):
            passed_over.append(f"{path.name} needs one of the CPU flags {', '.join(required)}")
            continue
        if passed_over:
            return variant, f"{'; '.join(passed_over)}, which this CPU lacks: serving {variant} ({path.name})"
        return variant, None
    raise ModelRepositoryError(
        f"{spec.folder}: no CPU variant among {list(order)} exists"
        + (f" ({'; '.join(passed_over)})" if passed_over else "")
    )
