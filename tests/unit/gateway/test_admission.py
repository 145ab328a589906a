"""Admission's measured work rate (what it judges a queue by)."""

from __future__ import annotations

import pytest

from gateway.api import admission
from gateway.api.admission import WorkRate


def test_the_rate_is_trusted_only_after_enough_busy_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(admission.time, "monotonic", lambda: clock[0])
    rate = WorkRate()
    rate.started()
    clock[0] += 0.1
    rate.finished(100, completed=True)
    assert rate.per_second is None  # one small request is mostly fixed costs
    clock[0] += 5.0  # idle time does not count
    rate.started()
    clock[0] += 0.4
    rate.finished(400, completed=True)
    assert rate.per_second == pytest.approx(1000.0)
    rate.started()
    clock[0] += 1.0
    rate.finished(2000, completed=False)  # stopped work: its time counts, its tokens do not
    assert rate.per_second == pytest.approx(500 / 1.5)


def test_overlapping_requests_share_the_busy_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(admission.time, "monotonic", lambda: clock[0])
    rate = WorkRate()
    rate.started()
    rate.started()
    clock[0] += 1.0
    rate.finished(1000, completed=True)
    rate.finished(1000, completed=True)
    assert rate.per_second == pytest.approx(2000.0)
