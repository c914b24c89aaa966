"""The polling budget: slots per connection, stretched intervals, the connection extra (injected clock)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from famulor_fixtures import set_conn

from famulor_provider.conversations.polling import POLLING_BUDGET, PollingBudget
from famulor_provider.exceptions import FamulorValidationError
from famulor_provider.hooks.famulor import FamulorHook


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_default_is_50_per_minute_per_connection() -> None:
    clock = Clock()
    budget = PollingBudget(clock, burst_seconds=0)
    delays = [budget.reserve("a") for _ in range(5)]
    assert delays == pytest.approx([0.0, 1.2, 2.4, 3.6, 4.8])
    assert budget.reserve("b") == 0.0  # another connection has its own budget
    clock.now += 60
    assert budget.reserve("a") == 0.0


def test_rate_of_the_connection_changes_the_slots() -> None:
    budget = PollingBudget(Clock(), burst_seconds=0)
    assert [budget.reserve("a", 20) for _ in range(3)] == pytest.approx([0.0, 3.0, 6.0])


def test_a_late_poller_may_burst_only_the_missed_burst_window() -> None:
    clock = Clock()
    budget = PollingBudget(clock, burst_seconds=6)
    budget.reserve("a")
    clock.now += 600  # idle for 10 minutes: only 6 s of slots (5 requests) may go at once
    delays = [budget.reserve("a") for _ in range(7)]
    assert delays[:6] == pytest.approx([0.0] * 6)
    assert delays[6] == pytest.approx(1.2)


def test_a_whole_minute_never_exceeds_the_rate() -> None:
    clock = Clock()
    budget = PollingBudget(clock)
    sent = []
    for _ in range(300):  # pollers asking as fast as they can: each sends when its slot comes
        clock.now = max(clock.now, clock.now + budget.reserve("a"))
        sent.append(clock.now)
    for start in sent:
        in_window = [t for t in sent if start <= t < start + 60]
        assert len(in_window) <= 50 + 5  # the rate plus the one burst


def test_shared_by_pollers_on_one_connection() -> None:
    budget = PollingBudget(Clock(), burst_seconds=0)
    reply, inbound = budget.reserve("conn"), budget.reserve("conn")
    assert (reply, inbound) == pytest.approx((0.0, 1.2))


def test_acquire_sleeps_without_blocking() -> None:
    budget = PollingBudget(Clock(), burst_seconds=0)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> None:
        await asyncio.gather(*(budget.acquire("a", 60, sleep=sleep) for _ in range(3)))

    asyncio.run(main())
    assert slept == pytest.approx([1.0, 2.0])


def test_interval_stretches_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    budget = PollingBudget(Clock())
    with caplog.at_level(logging.INFO, logger="famulor_provider.conversations.polling"):
        assert budget.interval("conn", 10, 60) == 60  # 10 requests a minute: within 50
        assert caplog.records == []
        assert budget.interval("conn", 101, 60) == pytest.approx(121.2)  # 100 pages + 1 read
        assert budget.interval("conn", 101, 60) == pytest.approx(121.2)
        assert budget.interval("conn", 100, 60, requests_per_minute=100) == 60
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "costs 101 requests: stretching the interval from 60 s to 121.2 s" in messages[0]
    assert "50 requests per minute (connection extra poll_requests_per_minute)" in messages[0]
    assert "back to its 60 s interval" in messages[1]


def test_process_wide_budget_exists() -> None:
    assert isinstance(POLLING_BUDGET, PollingBudget)


def test_connection_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)
    assert FamulorHook().config.poll_requests_per_minute == 50
    set_conn(monkeypatch, extra={"poll_requests_per_minute": "80"})
    assert FamulorHook().config.poll_requests_per_minute == 80


@pytest.mark.parametrize("value", ["fast", -5, 0])
def test_bad_connection_extra_is_named(monkeypatch: pytest.MonkeyPatch, value: object) -> None:
    set_conn(monkeypatch, extra={"poll_requests_per_minute": value})
    with pytest.raises(FamulorValidationError, match="poll_requests_per_minute"):
        FamulorHook().config  # noqa: B018
