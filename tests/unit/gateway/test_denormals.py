"""Denormals flushed to zero on the threads that run ONNX Runtime on the CPU (gateway/denormals.py): the CPU lane's
workers flush them unless the setting is off, whatever they inherited; a masked attention run there gives the
scores of a run that keeps them; the setting reaches the sessions, the lane and /info."""

from __future__ import annotations

import asyncio
import platform
import sys
import threading
from typing import Any

import numpy as np
import pytest

from bench.denormals import banded_attention
from gateway.backends.onnx_local import FairLane, make_session
from gateway.config import load_settings
from gateway.denormals import denormals_flushed, flush_denormals

# Where the lane sets the CPU's modes itself; elsewhere only ONNX Runtime's own threads flush.
X86_LINUX = sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")
TINY = [5e-324]  # the smallest double, a denormal: read as 0 by a thread that flushes (a list: never folded)


def _state() -> tuple[bool, float]:
    return denormals_flushed(), TINY[0] * 1.0


def _in_new_thread(fn: Any) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join(timeout=30)
    return out[0]


def _on_lane(lane: FairLane, fn: Any) -> Any:
    async def run() -> Any:
        result, _queued = await lane.run_timed(lambda _batch: fn(), None)  # type: ignore[arg-type]
        return result

    try:
        return asyncio.run(run())
    finally:
        lane.share("").close()


@pytest.mark.skipif(not X86_LINUX, reason="the CPU's modes are set by the lane on x86-64 Linux only")
def test_a_thread_flushes_once_set_and_keeps_denormals_once_cleared():
    def toggled() -> list[Any]:
        return [flush_denormals(True), _state(), flush_denormals(False), _state()]

    assert _in_new_thread(toggled) == [True, (True, 0.0), False, (False, 5e-324)]


def test_elsewhere_flushing_says_it_did_not():
    if X86_LINUX:  # the other branch of this test runs where the modes cannot be set
        assert _in_new_thread(flush_denormals) is True
    else:
        assert _in_new_thread(flush_denormals) is False and _in_new_thread(_state)[0] is False


@pytest.mark.skipif(not X86_LINUX, reason="the CPU's modes are set by the lane on x86-64 Linux only")
@pytest.mark.parametrize("inherited", [True, False])
def test_the_lane_sets_what_it_is_told_whatever_its_workers_inherit(inherited):
    """A worker thread starts with the modes of the thread that started it (here one set to `inherited`)."""

    def lanes() -> tuple[Any, Any]:
        flush_denormals(inherited)
        flushing = FairLane("flushing", trim_when_idle=False, workers=2)
        keeping = FairLane("keeping", trim_when_idle=False, workers=1, flush_denormals=False)
        return _on_lane(flushing, _state), _on_lane(keeping, _state)

    assert _in_new_thread(lanes) == ((True, 0.0), (False, 5e-324))


@pytest.mark.skipif(not X86_LINUX, reason="the CPU's modes are set by the lane on x86-64 Linux only")
def test_a_masked_attention_gives_the_same_output_flushed_or_not(tmp_path):
    path = tmp_path / "attention.onnx"
    feed = banded_attention(path)  # ModernBERT-base's local layer: keys beyond 64 tokens masked
    outputs = {}
    for flush in (True, False):
        session = make_session(path, device="cpu", threads=1, flush_denormals=flush)
        assert session.get_session_options().get_session_config_entry("session.set_denormal_as_zero") == str(
            int(flush)
        )
        lane = FairLane(f"lane-{flush}", trim_when_idle=False, flush_denormals=flush)
        outputs[flush] = _on_lane(lane, lambda s=session: (denormals_flushed(), s.run(None, feed)[0]))
    assert outputs[True][0] is True and outputs[False][0] is False  # each ran as set
    assert np.array_equal(outputs[True][1], outputs[False][1])


def test_the_setting_reaches_the_loader_and_its_lane(monkeypatch):
    from gateway.loading import LoadOptions, ModelLoader

    assert load_settings().flush_denormals is True
    assert ModelLoader(LoadOptions.from_settings(load_settings()))._cpu_lane.flush_denormals is True
    monkeypatch.setenv("RERANKER_FLUSH_DENORMALS", "0")
    options = LoadOptions.from_settings(load_settings())
    assert options.flush_denormals is False and ModelLoader(options)._cpu_lane.flush_denormals is False


def test_a_scorer_with_a_lane_of_its_own_flushes_as_told(tmp_path):
    """A CUDA session's scorer gets its own lane; the loader passes it the same setting as the CPU lane's."""
    from gateway.backends.onnx_local import OnnxScorer

    path = tmp_path / "attention.onnx"
    banded_attention(path)
    session = make_session(path, device="cpu", threads=1)
    for flush in (True, False):
        scorer = OnnxScorer(session, name="onnx-cuda", flush_denormals=flush)
        assert scorer._lane.lane.flush_denormals is flush
        scorer._lane.close()
