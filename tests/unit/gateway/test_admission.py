"""Admission per model: each model's work priced in seconds at its own measured speed (gateway/cost.py),
refused at once (429 with Retry-After) when it cannot finish before the model's deadline, with the other
models' queued work and weights taken into account (gateway/admission.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from gateway.admission import ADMIT_WITHIN, Admission, AdmissionConfig
from gateway.backends.onnx_local import FairLane
from gateway.cost import WorkMeter
from gateway.domain import BatchScores, EncodedBatch, RerankQuery
from gateway.errors import Overloaded
from gateway.models import LoadedModels, ModelStage
from gateway.pipeline import PipelineConfig, Reranker
from gateway.plan import PairOptions, RequestPlan, StageWindows, WorkEstimate, estimate_work, plan_request
from gateway.repository import read_model_spec
from gateway.tokenization import PairTokenizer

QUERY = "how do rivers carry sediment"
DOCS = ("Rivers carry silt to the sea.", "A railway timetable.", "Deltas form where rivers slow down.")


# --- the meter ------------------------------------------------------------------------------------------
def test_a_meter_knows_nothing_until_a_batch_of_its_own_model_ran():
    meter = WorkMeter("m")
    assert meter.per_second is None and meter.seconds(1000) is None and not meter.measured
    meter.record(500, 10.0, 10.5)
    meter.record(1500, 11.0, 12.5)
    assert meter.per_second == pytest.approx(1000.0)
    assert meter.seconds(3000) == pytest.approx(3.0)


def test_overlapping_batches_count_their_time_once():
    """Triton or CUDA run a model's batches at once: the union of their service intervals is its busy time."""
    meter = WorkMeter("m")
    meter.record(1000, 0.0, 1.0)
    meter.record(1000, 0.0, 1.0)  # at the same time: twice the tokens, the same second
    assert meter.per_second == pytest.approx(2000.0)
    meter.record(1000, 0.5, 1.5)  # half of it overlaps
    assert meter.per_second == pytest.approx(3000 / 1.5)


def test_a_meter_knows_what_share_of_the_recent_seconds_its_batches_held():
    meter = WorkMeter("m", recent_s=10.0)
    assert meter.busy_share(now=0.0) == 0.0
    meter.record(100, 1.0, 2.0)
    meter.record(100, 1.5, 4.0)  # overlaps the first by half a second: 3 s in service
    assert meter.busy_share(now=5.0) == pytest.approx(0.3)
    assert meter.busy_share(now=12.5) == pytest.approx(0.2)  # the first batch's second left the window
    assert meter.busy_share(now=30.0) == 0.0
    for k in range(1000):  # batches nobody asks about: only the last recent_s of them are kept
        meter.record(10, 100.0 + k, 100.5 + k)
    assert len(meter._recent) <= 11 and meter.busy_share(now=1100.0) == pytest.approx(0.5)


def test_old_measurements_fade_but_keep_the_rate():
    meter = WorkMeter("m", horizon_s=2.0)
    for k in range(5):
        meter.record(100, float(k), k + 1.0)
    assert meter.per_second == pytest.approx(100.0)
    meter.record(1000, 5.0, 6.0)  # the machine got faster: the recent batch weighs more than its share
    assert meter.per_second > 1100 / 6


# --- the estimate in tokens, with the model's own pair layout --------------------------------------------
def _plan(windows: StageWindows, **query: object) -> RequestPlan:
    return plan_request(RerankQuery(QUERY, DOCS, **query), _limits(), windows, (0, False))  # type: ignore[arg-type]


def _limits():
    from gateway.plan import PlanLimits

    return PlanLimits()


def test_the_estimate_counts_the_models_own_tokens_per_pair():
    bert = _plan(StageWindows(512, None, reranker_specials=3))
    decoder = _plan(StageWindows(512, None, reranker_specials=70))
    assert decoder.work.reranker - bert.work.reranker == pytest.approx(67 * len(DOCS))
    instructed = _plan(StageWindows(512, None, True, 70, default_instruction="x" * 40))
    assert instructed.work.reranker - decoder.work.reranker == pytest.approx(10 * len(DOCS))  # 40 chars / 4
    own = _plan(StageWindows(512, None, True, 70, default_instruction="x" * 40), instruction="y" * 80)
    assert own.work.reranker - decoder.work.reranker == pytest.approx(20 * len(DOCS))
    capped = _plan(StageWindows(16, None, reranker_specials=70))
    assert capped.work.reranker == 16 * len(DOCS)  # never more than the pair's window


def test_a_cascade_estimates_both_stages_apart():
    windows = StageWindows(512, 128, reranker_specials=3, prefilter_specials=3)
    plan = plan_request(RerankQuery(QUERY, DOCS, keep=1), _limits(), windows, (1, False))
    assert plan.use_prefilter and plan.work.prefilter > 0
    longest = max(estimate_work(replace(plan, keep=3), windows).reranker / 3, 0)
    assert plan.work.reranker <= longest * 3 and plan.work == estimate_work(plan, windows)
    assert WorkEstimate(1, 2) + WorkEstimate(3, 4) == WorkEstimate(4, 6)


# --- each model its own speed ---------------------------------------------------------------------------
class PacedScorer:
    """Runs on a real FairLane and holds it `per_token` seconds per real token of the batch: a model that
    costs what its tokens cost, deterministically."""

    def __init__(self, lane: FairLane, model: str, per_token: float) -> None:
        self.name = "paced"
        self.input_names = ("input_ids", "attention_mask")
        self.max_batch_size: int | None = None
        self.per_token = per_token
        self._share = lane.share(model)

    def _run(self, batch: EncodedBatch) -> np.ndarray:
        time.sleep(self.per_token * int(batch.inputs["attention_mask"].sum()))
        return np.zeros(batch.size, dtype=np.float32)

    async def score(self, batch: EncodedBatch) -> BatchScores:
        logits, queued = await self._share.run_timed(self._run, batch)
        return BatchScores(logits, self.name, queued_s=queued)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._share.close()


def paced_reranker(tiny_model_repository, lane: FairLane, name: str, per_token: float, *, warm_up: bool):
    spec = read_model_spec(tiny_model_repository, "reranker")
    spec = replace(spec, folder=spec.folder.parent / name)  # the meter is labelled by the folder

    def loader() -> LoadedModels:
        tokenizer = PairTokenizer.from_dir(spec.tokenizer_dir, max_length=128)
        stage = ModelStage(spec, tokenizer, PacedScorer(lane, name, per_token), 128, "fp32", 512)
        return LoadedModels(reranker=stage, prefilter=None)

    return Reranker(PipelineConfig(model=name), loader, warm_up=warm_up)


def test_each_model_is_priced_at_its_own_speed_measured_at_load(tiny_model_repository):
    lane = FairLane("test-lane", trim_when_idle=False)
    fast = paced_reranker(tiny_model_repository, lane, "fast", 2e-5, warm_up=True)
    slow = paced_reranker(tiny_model_repository, lane, "slow", 2e-4, warm_up=True)
    cold = paced_reranker(tiny_model_repository, lane, "cold", 2e-4, warm_up=False)

    async def measure() -> tuple[float | None, float | None, float | None]:
        for r in (fast, slow, cold):
            await r.load()
        query = [RerankQuery(QUERY, DOCS)]
        return (
            fast.speed.seconds(fast.plan(query)),
            slow.speed.seconds(slow.plan(query)),
            cold.speed.seconds(cold.plan(query)),
        )

    try:
        fast_s, slow_s, cold_s = asyncio.run(measure())
    finally:
        lane.close()
    assert fast_s is not None and slow_s is not None
    assert slow_s > 3 * fast_s  # 10x the cost per token; the machine's noise leaves at least 3x
    assert cold_s is None  # no warm-up and no traffic yet: not priced at another model's speed
    assert fast.models is not None and fast.models.reranker.meter.batches >= 2  # the warm-up's batches


# --- admission -----------------------------------------------------------------------------------------
class HeldModel:
    """A served model's pipeline as admission sees it: `seconds` of work per query, held until released."""

    def __init__(
        self, name: str, seconds: float | None, batch_seconds: float = 0.0, speed_age_s: float | None = 1.0
    ) -> None:
        self.name = name
        self.cost = seconds  # per query
        self.batch_seconds = batch_seconds
        self.age = speed_age_s
        self.remeasured = 0
        self.faster_after_remeasure: float | None = None
        self.loaded = True
        self.release = asyncio.Event()
        self.ran = 0
        self.busy = 0.0  # the share of the recent seconds its batches held the runtime

    def busy_share(self) -> float:
        return self.busy

    async def load(self) -> None:
        return None

    def plan(self, queries: Sequence[RerankQuery]) -> list[RerankQuery]:
        return list(queries)

    def seconds(self, plans: Sequence[RerankQuery]) -> float | None:
        return None if self.cost is None else self.cost * len(plans)

    @property
    def speed(self) -> HeldModel:  # its own speed, as ModelSpeed answers
        return self

    def age_s(self) -> float | None:
        return self.age

    async def remeasure(self) -> None:
        self.remeasured += 1
        self.age = 0.0
        if self.faster_after_remeasure is not None:
            self.cost = self.faster_after_remeasure

    async def run(self, plans: Sequence[RerankQuery]) -> list[str]:
        await self.release.wait()
        self.ran += 1
        return ["done"] * len(plans)


def _admission(*models: HeldModel, timeout: float = 10.0, weights: dict[str, float] | None = None):
    weights = weights or {}
    configs = {
        m.name: AdmissionConfig(request_timeout_s=timeout, weight=weights.get(m.name, 1.0)) for m in models
    }
    return Admission(models[0], AdmissionConfig(), configs)  # type: ignore[arg-type]


def test_work_that_cannot_finish_before_its_deadline_is_refused_at_once():
    slow = HeldModel("slow", seconds=3.0)  # 3 s a request, deadline 10 s: 8 s of it admitted
    fast = HeldModel("fast", seconds=0.01, batch_seconds=0.0)
    admission = _admission(slow, fast)
    q = [RerankQuery(QUERY, DOCS)]

    async def flood():
        fast.release.set()  # the fast model answers at once
        held = [asyncio.ensure_future(admission.run(q, slow)) for _ in range(2)]  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert admission.queue("slow").in_flight == 2
        with pytest.raises(Overloaded) as refused:
            await admission.run(q, slow)  # type: ignore[arg-type]
        still_waiting = not any(h.done() for h in held)  # refused without waiting for anything
        answer = await admission.run(q, fast)  # type: ignore[arg-type]  # another model's small work
        slow.release.set()
        done = await asyncio.gather(*held)
        return refused.value, still_waiting, answer, done

    refused, still_waiting, answer, done = asyncio.run(flood())
    assert still_waiting and answer == ["done"] and done == [["done"], ["done"]]
    assert "would not finish within request_timeout_s (10.0s)" in refused.message
    assert refused.retry_after == pytest.approx(9.0 - ADMIT_WITHIN * 10.0)  # 3 x 3 s queued, 8 s allowed
    assert admission.queue("slow").in_flight == 0 and admission.queue("slow").queued_s == 0


def test_the_finish_time_counts_the_other_models_share_of_the_runtime():
    slow, fast = HeldModel("slow", 4.0, batch_seconds=0.5), HeldModel("fast", 5.0)
    equal = _admission(slow, fast, timeout=10.0)
    equal.queue("slow").enter(8.0)
    equal.queue("slow").batch_s = 0.5
    # 5 s of fast work; meanwhile the slow model gets as much (weights 1:1), and one slow batch is running
    assert equal.finish_seconds(equal.queue("fast"), 5.0) == pytest.approx(5 + 5 + 0.5)
    favoured = _admission(slow, fast, timeout=10.0, weights={"fast": 4.0})
    favoured.queue("slow").enter(8.0)
    favoured.queue("slow").batch_s = 0.5
    assert favoured.finish_seconds(favoured.queue("fast"), 5.0) == pytest.approx(5 + 5 / 4 + 0.5)
    # the slow model's queue is only so long: what it does not have, it does not take
    assert equal.finish_seconds(equal.queue("fast"), 20.0) == pytest.approx(20 + 8 + 0.5)


def test_admitted_work_is_priced_again_at_the_speed_measured_now():
    """A model slows down while it shares the machine: its admitted work is longer than when it was admitted,
    and a request that would have fitted at the old speed is refused."""
    slow = HeldModel("slow", seconds=2.0)  # deadline 10 s: 8 s admitted
    admission = _admission(slow)
    q = [RerankQuery(QUERY, DOCS)]

    async def go():
        held = [asyncio.ensure_future(admission.run(q, slow)) for _ in range(2)]  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert admission.queue("slow").queued_s == pytest.approx(4.0)
        slow.cost = 3.0  # 1.5x slower now: 6 s queued, 9 s with the next one
        with pytest.raises(Overloaded) as refused:
            await admission.run(q, slow)  # type: ignore[arg-type]
        assert admission.queue("slow").queued_s == pytest.approx(6.0)
        slow.release.set()
        await asyncio.gather(*held)
        return refused.value

    refused = asyncio.run(go())
    assert refused.retry_after == pytest.approx(9.0 - ADMIT_WITHIN * 10.0)
    assert admission.queue("slow").queued_s == 0


def test_a_stream_of_small_requests_counts_by_its_recent_share_of_the_runtime():
    """A model that queues little at any moment but keeps sending takes its recent share meanwhile."""
    slow, fast = HeldModel("slow", 4.0), HeldModel("fast", 0.01, batch_seconds=0.05)
    admission = _admission(slow, fast, timeout=10.0)
    fast_queue = admission.queue("fast")
    fast_queue.busy_share, fast_queue.batch_s = 0.2, 0.05  # nothing queued, 20 % of the runtime recently
    # 4 s of slow work gets 80 % of the runtime: 5 s, of which the fast stream takes 1 s; one fast batch runs
    assert admission.finish_seconds(admission.queue("slow"), 4.0) == pytest.approx(4 + 1 + 0.05)
    fast_queue.busy_share = 0.95  # a flood on the fast model takes at most its fair share (weights 1:1)
    assert admission.finish_seconds(admission.queue("slow"), 4.0) == pytest.approx(4 + 4 + 0.05)
    with pytest.raises(Overloaded, match="'fast' held 95% of the runtime"):
        asyncio.run(admission.run([RerankQuery(QUERY, DOCS)], slow))  # type: ignore[arg-type]
    fast_queue.busy_share = 0.2
    fast.busy = 0.5  # admission reads the share from the model's speed at each decision
    slow.release.set()
    assert asyncio.run(admission.run([RerankQuery(QUERY, DOCS)], slow)) == ["done"]  # type: ignore[arg-type]
    assert admission.queue("slow").busy_share == 0.0 and fast_queue.busy_share == 0.2  # fast: not asked yet
    fast.release.set()
    asyncio.run(admission.run([RerankQuery(QUERY, DOCS)], fast))  # type: ignore[arg-type]
    assert fast_queue.busy_share == 0.5


def test_unpriced_work_is_admitted():
    unmeasured = HeldModel("new", seconds=None)
    admission = _admission(unmeasured)
    unmeasured.release.set()
    assert asyncio.run(admission.run([RerankQuery(QUERY, DOCS)], unmeasured)) == ["done"]  # type: ignore[arg-type]


def test_work_too_large_for_the_deadline_even_alone_is_a_limit_never_judged_on_an_old_speed():
    from gateway.admission import STALE_SPEED_S
    from gateway.errors import LimitExceeded

    huge = HeldModel("huge", seconds=1000.0)
    admission = _admission(huge)
    huge.release.set()
    q = [RerankQuery(QUERY, DOCS)]
    with pytest.raises(LimitExceeded) as refused:
        asyncio.run(admission.run(q, huge))  # type: ignore[arg-type]
    assert refused.value.limit == "request_timeout_s"
    assert "send fewer or shorter documents" in refused.value.message
    assert huge.ran == 0 and huge.remeasured == 0  # a fresh speed: refused at once
    huge.age = STALE_SPEED_S + 1  # measured long ago, the model idle: measured again before judging
    with pytest.raises(LimitExceeded):
        asyncio.run(admission.run(q, huge))  # type: ignore[arg-type]
    assert huge.remeasured == 1 and huge.ran == 0  # still too large at the new speed
    huge.age, huge.faster_after_remeasure = STALE_SPEED_S + 1, 2.0  # the machine got faster meanwhile
    assert asyncio.run(admission.run(q, huge)) == ["done"]  # type: ignore[arg-type]
    assert huge.remeasured == 2


def test_each_model_has_its_own_limits_and_in_flight_bound():
    small = HeldModel("small", 0.0)
    admission = Admission(
        small,  # type: ignore[arg-type]
        AdmissionConfig(),
        {"small": AdmissionConfig(max_documents=2, max_in_flight=1)},
    )
    from gateway.errors import LimitExceeded

    with pytest.raises(LimitExceeded, match="the limit max_documents is 2"):
        asyncio.run(admission.run([RerankQuery(QUERY, DOCS)], small))  # type: ignore[arg-type]
    assert admission.queue("other").config == AdmissionConfig()  # a model without its own: the defaults

    async def two():
        first = asyncio.ensure_future(admission.run([RerankQuery(QUERY, DOCS[:1])], small))  # type: ignore[arg-type]
        second = asyncio.ensure_future(admission.run([RerankQuery(QUERY, DOCS[:1])], small))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        running = small.ran
        small.release.set()
        await asyncio.gather(first, second)
        return running

    assert asyncio.run(two()) == 0 and small.ran == 2


def test_a_failed_warm_up_leaves_the_speed_to_traffic(tiny_model_repository):
    lane = FairLane("test-lane", trim_when_idle=False)
    reranker = paced_reranker(tiny_model_repository, lane, "broken", 1e-5, warm_up=True)
    failing = threading.Event()
    failing.set()

    async def go():
        models = await reranker.slot.load()
        scorer = models.reranker.scorer
        original = scorer.score

        async def maybe_fail(batch):
            if failing.is_set():
                raise RuntimeError("not yet")
            return await original(batch)

        scorer.score = maybe_fail  # type: ignore[method-assign]
        await reranker.load()  # the warm-up fails: logged, the load stands
        unmeasured = reranker.speed.seconds(reranker.plan([RerankQuery(QUERY, DOCS)]))
        failing.clear()
        await reranker.rerank(RerankQuery(QUERY, DOCS))
        return unmeasured, reranker.speed.seconds(reranker.plan([RerankQuery(QUERY, DOCS)]))

    try:
        before, after = asyncio.run(go())
    finally:
        lane.close()
    assert before is None and after is not None and after > 0


def test_pair_options_are_unchanged_by_pricing():
    assert PairOptions(512, 1, 32, True, "right").cache_namespace("v") == "v|512|1|32|right|True|None"


def test_a_model_measures_its_speed_again_from_scratch(tiny_model_repository):
    lane = FairLane("test-lane", trim_when_idle=False)
    reranker = paced_reranker(tiny_model_repository, lane, "m", 2e-4, warm_up=True)

    async def go():
        models = await reranker.load()
        before = models.reranker.meter.per_second
        models.reranker.scorer.per_token = 2e-5  # type: ignore[attr-defined]  # the machine got 10x faster
        await reranker.speed.remeasure()
        return before, models.reranker.meter.per_second, reranker.speed.age_s()

    try:
        before, after, age = asyncio.run(go())
    finally:
        lane.close()
    assert before is not None and after is not None and after > 3 * before  # not blended with the old figure
    assert age is not None and age < 60
