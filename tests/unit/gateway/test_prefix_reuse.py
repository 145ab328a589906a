"""The shared prompt computed once (gateway/backends/prefix_reuse.py): a query's head (template prefix + query
part) runs once, every document after its cache, and the scores equal the full computation of the plain
graph, with and without an instruction and for a document cut to fit; batches that share no head run the
full computation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import family_models as fm
import numpy as np
import pytest

from gateway import metrics
from gateway.backends.onnx_local import FairLane, OnnxScorer
from gateway.backends.prefix_reuse import MIN_SHARED_TOKENS, PrefixReuseScorer
from gateway.domain import RerankQuery
from gateway.families import QWEN3_RERANKER
from gateway.loading import LoadOptions, ModelLoader
from gateway.pipeline import PipelineConfig, Reranker
from gateway.repository import read_model_spec
from gateway.scoring import _by_job
from gateway.tokenization import PairTokenizer, build_batch

ort = pytest.importorskip("onnxruntime")

QUERY = "Does vitamin D affect bone density in older adults?"
DOCS = [
    "Vitamin D and bone density in older adults: vitamin D strongly affects bone density.",
    "the railway timetable changes in spring when new trains arrive",
    "short",
    "the study measured outcomes over several years and the authors report confidence intervals " * 6,
]
NAMES = ("input_ids", "attention_mask")


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny Qwen3 reranker: (its folder, the plain graph, the fused cached graph)."""
    from export import torch_export
    from export.sources import resolve_source

    root = tmp_path_factory.mktemp("prefix-reuse")
    folder = fm.build_qwen3_reranker(root / "qwen3")
    family = resolve_source(str(folder), quiet=True, template="qwen3-reranker").family
    from transformers import AutoTokenizer

    yes, no = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(["yes", "no"])
    plain, cached = root / "model.onnx", root / "model.opt.onnx"
    torch_export.export_fp32(family, folder, plain, opset=17, positive_id=yes, negative_id=no)
    _, layout = torch_export.export_fused(family, folder, cached, positive_id=yes, negative_id=no)
    assert layout is not None and layout.layers == 2
    return folder, plain, cached


def _tokenizer(folder: Path, max_length: int = 512) -> PairTokenizer:
    return PairTokenizer.from_dir(
        folder, max_length=max_length, template=QWEN3_RERANKER, padding_side="right"
    )


def _scores(model, batch) -> tuple[np.ndarray, np.ndarray, PrefixReuseScorer]:
    _, plain, cached = model
    full = OnnxScorer(_session(plain), name="onnx-cpu").run_sync(batch)
    reuse = PrefixReuseScorer(_session(cached), name="onnx-cpu")
    return full, reuse.run_sync(batch), reuse


@pytest.mark.parametrize("instruction", [None, "Given a question, find the passage that answers it"])
def test_head_once_equals_the_full_computation(model, instruction: str | None):
    tok = _tokenizer(model[0])
    enc = tok.encode_pairs(QUERY, DOCS, instruction=instruction)
    batch = build_batch(enc.windows, NAMES, tok.pad_id, padding_side="right")
    assert batch.shared_prefix == enc.windows[0].shared >= MIN_SHARED_TOKENS
    full, reuse, scorer = _scores(model, batch)
    assert scorer.head_runs == 1
    assert np.abs(full - reuse).max() <= 1e-4
    assert np.ptp(full) > 1e-3  # the documents score differently: the comparison can fail


def test_a_document_cut_to_fit_equals_the_full_computation(model):
    tok = _tokenizer(model[0], max_length=200)
    enc = tok.encode_pairs(QUERY, DOCS)
    assert enc.truncated[3] and max(len(w.ids) for w in enc.windows) == 200
    batch = build_batch(enc.windows, NAMES, tok.pad_id, padding_side="right")
    full, reuse, _ = _scores(model, batch)
    assert np.abs(full - reuse).max() <= 1e-4


def test_the_head_is_computed_once_per_query_across_batches(model):
    _, _, cached = model
    tok = _tokenizer(model[0])
    enc = tok.encode_pairs(QUERY, DOCS)
    scorer = PrefixReuseScorer(_session(cached), name="onnx-cpu")
    first = asyncio.run(scorer.score(build_batch(enc.windows[:2], NAMES, tok.pad_id)))
    second = asyncio.run(scorer.score(build_batch(enc.windows[2:], NAMES, tok.pad_id)))
    assert scorer.head_runs == 1 and len(first.logits) == len(second.logits) == 2
    other = tok.encode_pairs("how do plants make food?", DOCS[:1])
    asyncio.run(scorer.score(build_batch(other.windows, NAMES, tok.pad_id)))
    assert scorer.head_runs == 2


def test_rows_without_one_head_run_the_full_computation(model):
    """Windows of two queries (or a template whose document comes first) share no head: full computation."""
    tok = _tokenizer(model[0])
    windows = [*tok.encode_pairs(QUERY, DOCS[:2]).windows, *tok.encode_pairs("plants?", DOCS[:2]).windows]
    batch = build_batch(windows, NAMES, tok.pad_id, padding_side="right")
    assert batch.shared_prefix == 0
    full, reuse, scorer = _scores(model, batch)
    assert scorer.head_runs == 0
    assert np.abs(full - reuse).max() <= 1e-4


def test_stage_batches_keep_each_query_apart():
    lengths = [30, 10, 20, 25, 5]
    jobs = [0, 0, 1, 1, 0]
    plan = _by_job(lengths, jobs, token_budget=1000, max_rows=2)
    assert sorted(i for rows in plan for i in rows) == list(range(5))
    assert all(len({jobs[i] for i in rows}) == 1 for rows in plan)
    assert all(len(rows) <= 2 for rows in plan)


def test_a_cached_decoder_is_served_on_the_fair_lane_and_warms_up(tiny_decoder_repository: Path):
    """Through the loader and the pipeline: the cached graph is served by PrefixReuseScorer on its model's share
    of the CPU lane (metrics labelled with the model), each query's batches share one head, the warm-up
    measures its speed, and the scores equal the plain graph's full computation."""
    spec = read_model_spec(tiny_decoder_repository, "reranker")
    assert spec.variants["fp32-opt"]["kv_cache"]["layers"] == 2 and spec.padding_side == "right"
    lane = FairLane("test-cpu", trim_when_idle=False)
    options = LoadOptions(tiny_decoder_repository, "reranker", device="cpu", cpu_precision="fp32", threads=2)
    reranker = Reranker(PipelineConfig(model="reranker"), ModelLoader(options, cpu_lane=lane), warm_up=True)
    ok = metrics.SCORER_CALLS.labels("onnx-cpu", "inproc", "ok", "reranker")
    before = ok._value.get()

    async def run():
        models = await reranker.load()
        outcome = await reranker.rerank(RerankQuery(QUERY, tuple(DOCS), keep=0))
        await reranker.close()
        return models, outcome

    models, outcome = asyncio.run(run())
    stage = models.reranker
    scorer = stage.scorer
    assert isinstance(scorer, PrefixReuseScorer) and stage.variant == "fp32-opt" and stage.per_query_batches
    assert stage.meter.measured and stage.meter.per_second  # the warm-up measured the cached graph
    assert set(lane.served) == {"reranker"} and ok._value.get() > before
    assert scorer.head_runs == 2  # the warm-up's query once, the request's query once
    tok = PairTokenizer.from_spec(spec, max_length=stage.max_length)
    enc = tok.encode_pairs(QUERY, DOCS)
    plain = _session(spec.variant_path("fp32"))
    full = OnnxScorer(plain, name="onnx-cpu").run_sync(
        build_batch(enc.windows, NAMES, tok.pad_id, padding_side="right")
    )
    served = {d.index: d.logit for d in outcome.results}
    assert np.abs(np.array([served[i] for i in range(len(DOCS))]) - full).max() <= 1e-4


def test_two_lane_workers_share_each_query_head(tiny_decoder_repository: Path):
    """One document a batch on a two-worker lane: a query's batches run two at a time, its head is computed once
    all the same (the second batch waits for it), and the scores equal the plain graph's full computation."""
    spec = read_model_spec(tiny_decoder_repository, "reranker")
    lane = FairLane("test-cpu-two", trim_when_idle=False, workers=2)
    options = LoadOptions(tiny_decoder_repository, "reranker", device="cpu", cpu_precision="fp32", threads=1)
    config = PipelineConfig(model="reranker", max_batch_size=1)
    reranker = Reranker(config, ModelLoader(options, cpu_lane=lane), warm_up=False)

    async def run():
        models = await reranker.load()
        outcome = await reranker.rerank(RerankQuery(QUERY, tuple(DOCS), keep=0))
        workers = lane.alive_workers
        await reranker.close()
        return models, outcome, workers

    models, outcome, workers = asyncio.run(run())
    scorer = models.reranker.scorer
    assert isinstance(scorer, PrefixReuseScorer) and workers == 2
    assert scorer.head_runs == 1 and models.reranker.meter.batches == len(DOCS)
    tok = PairTokenizer.from_spec(spec, max_length=models.reranker.max_length)
    enc = tok.encode_pairs(QUERY, DOCS)
    full = OnnxScorer(_session(spec.variant_path("fp32")), name="onnx-cpu").run_sync(
        build_batch(enc.windows, NAMES, tok.pad_id, padding_side="right")
    )
    served = {d.index: d.logit for d in outcome.results}
    assert np.abs(np.array([served[i] for i in range(len(DOCS))]) - full).max() <= 1e-4
