"""One served model's speed: measured at load by a warm-up of each of its stages, measured again on demand, and
the seconds its plans will take at it (what admission judges a request by).

Each loaded stage keeps its own `WorkMeter` (gateway/cost.py), fed by every batch it runs (gateway/scoring.py);
this part reads them for one served model and decides when to measure. The shared prefilter is measured once,
by the first model that finds it unmeasured.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from gateway.models import LoadedModels
from gateway.plan import RequestPlan
from gateway.scoring import StageScorer

log = logging.getLogger(__name__)


class ModelSpeed:
    """The measured speed of one served model's stages (attached once they are loaded)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._models: LoadedModels | None = None
        self._stages: Mapping[str, StageScorer] = {}
        self._remeasuring = False

    def attach(self, models: LoadedModels, stages: Mapping[str, StageScorer]) -> None:
        self._models, self._stages = models, stages

    async def warm_up(self) -> None:
        """Each stage's speed on synthetic pairs, unless already measured (the prefilter is shared). A stage that
        cannot score yet is measured by its first requests instead."""
        for role, stage in self._stages.items():
            if stage.stage.meter.measured:
                continue
            try:
                await stage.warm_up()
            except Exception as exc:
                log.warning(
                    "%s: the warm-up of its %s failed (%s); traffic will measure it", self.name, role, exc
                )
            rate = stage.stage.meter.per_second
            log.info("%s: %s scores %s tokens/s", self.name, role, f"{rate:.0f}" if rate else "?")

    async def remeasure(self) -> None:
        """Measure the cross-encoder's speed again, from scratch (admission, before it refuses a request on a
        figure measured long ago). A second caller meanwhile does not wait: the speed is unknown until done."""
        stage = self._stages.get("reranker")
        if stage is None or self._remeasuring:
            return
        self._remeasuring = True
        try:
            stage.stage.meter.reset()
            await stage.warm_up()
        except Exception as exc:
            log.warning("%s: measuring its speed again failed (%s)", self.name, exc)
        finally:
            self._remeasuring = False

    def seconds(self, plans: Sequence[RequestPlan]) -> float | None:
        """The plans' estimated runtime seconds at each stage's measured speed; None while a stage they use is
        unmeasured (no other model's speed stands in for it)."""
        models = self._models
        if models is None:
            return None
        total = 0.0
        for p in plans:
            seconds = models.reranker.meter.seconds(p.work.reranker)
            if p.work.prefilter:
                pre = models.prefilter.meter.seconds(p.work.prefilter) if models.prefilter else None
                seconds = None if seconds is None or pre is None else seconds + pre
            if seconds is None:
                return None
            total += seconds
        return total

    def age_s(self) -> float | None:
        """Seconds since the cross-encoder's speed was last measured (None: never)."""
        return self._models.reranker.meter.age_s() if self._models else None

    def busy_share(self) -> float:
        """The share of the recent seconds the cross-encoder's batches held its runtime (0: unloaded)."""
        return self._models.reranker.meter.busy_share() if self._models else 0.0

    @property
    def batch_seconds(self) -> float:
        """How long one of this model's batches holds the runtime (another model's batch may wait that long)."""
        models = self._models
        return max((st.meter.batch_seconds for st in models.stages()), default=0.0) if models else 0.0
