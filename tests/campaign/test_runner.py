"""The campaign loop with an injected clock: 429 holds overlap instead of adding up."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from famulor_provider.campaign.ledger import CampaignLedger, read_campaign_ledger
from famulor_provider.campaign.runner import CampaignRunner, CampaignSettings, CampaignStopped
from famulor_provider.exceptions import FamulorInsufficientBalanceError, FamulorRateLimitError

PHONES = [f"+1415555{n:04d}" for n in range(5)]


class FakeClock:
    """A monotonic clock that only ``sleep`` moves.

    Before it moves, ``settle`` (if set) lets the send threads finish what they are doing, so an
    answer's time never depends on how the machine schedules threads.
    """

    def __init__(self) -> None:
        self.now = 100.0
        self.lock = threading.Lock()
        self.settle: Any = None

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        if self.settle is not None:
            self.settle()
        with self.lock:
            self.now += max(0.0, seconds)


class FiveInFlightThen429:
    """The first five sends are all in flight at once, then each is answered 429 Retry-After."""

    def __init__(self, clock: FakeClock, retry_after: float) -> None:
        self.clock = clock
        self.retry_after = retry_after
        self.barrier = threading.Barrier(5)
        self.calls: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def send_whatsapp_template(self, sender_id: int, template_id: int, phone: str, **_: Any) -> Any:
        with self.lock:
            self.calls.append((phone, self.clock()))
            first_five = len(self.calls) <= 5
        if first_five:
            self.barrier.wait(timeout=10)
            raise FamulorRateLimitError("429", retry_after=self.retry_after)
        return SimpleNamespace(
            message_id=len(self.calls), whatsapp_message_id=900 + len(self.calls), status="queued"
        )


def all_answered(hook: FiveInFlightThen429, runner: CampaignRunner) -> None:
    """Once the first five sends are all in flight (none answers before), wait (in real time, at
    most 10 s) until every send in flight has its answer."""
    if len(hook.calls) < 5:
        return
    deadline = time.monotonic() + 10
    while any(answered[0] is None for answered in list(runner.answered)):
        assert time.monotonic() < deadline, "a send never answered"
        time.sleep(0.001)


def run(tmp_path: Path, retry_after: float) -> tuple[FiveInFlightThen429, CampaignRunner]:
    clock = FakeClock()
    hook = FiveInFlightThen429(clock, retry_after)
    settings = CampaignSettings(
        sender_id=12, template_id=1, max_sends_per_second=50, resend_unknown=False, offline_timeout=10
    )
    identity = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1}
    with CampaignLedger.open(tmp_path, **identity, try_number=1) as ledger:
        runner = CampaignRunner(hook, settings, ledger, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
        clock.settle = lambda: all_answered(hook, runner)
        runner.run([{"recipient_phone": phone} for phone in PHONES], len(PHONES))
    return hook, runner


def test_five_overlapping_429s_hold_once_not_five_times(tmp_path: Path) -> None:
    hook, runner = run(tmp_path, retry_after=2)

    assert runner.rate_limited == 5 and runner.outcomes["sent"] == 5
    first_sends, again = hook.calls[:5], hook.calls[5:]
    assert sorted(phone for phone, _ in again) == PHONES
    last_in_flight = max(at for _, at in first_sends)
    # Every 429 arrived by then (the clock only moves when the campaign sleeps): the next send
    # leaves 2 s later (not 10 s: five holds of 2 s one after the other).
    assert 2.0 <= min(at for _, at in again) - last_in_flight < 2.1


def test_a_hold_is_capped_at_60_seconds(tmp_path: Path) -> None:
    hook, _ = run(tmp_path, retry_after=3600)

    last_in_flight = max(at for _, at in hook.calls[:5])
    assert 60.0 <= min(at for _, at in hook.calls[5:]) - last_in_flight < 60.1


class SlowWrites:
    """A ledger whose every write takes ``seconds`` of the fake clock (a store 100 ms away)."""

    def __init__(self, ledger: CampaignLedger, clock: FakeClock, seconds: float) -> None:
        self.ledger, self.clock, self.seconds = ledger, clock, seconds
        self.groups: list[list[str]] = []

    def record_attempts(self, phones: list[str]) -> None:
        self.groups.append(list(phones))
        with self.clock.lock:
            self.clock.now += self.seconds
        self.ledger.record_attempts(phones)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)


class BalanceRunsOut:
    """Answers every send at once; the first one with 402 INSUFFICIENT_BALANCE."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def send_whatsapp_template(self, sender_id: int, template_id: int, phone: str, **_: Any) -> Any:
        self.calls.append(phone)
        if len(self.calls) == 1:
            raise FamulorInsufficientBalanceError("402", status_code=402, error_code="INSUFFICIENT_BALANCE")
        return SimpleNamespace(
            message_id=len(self.calls), whatsapp_message_id=900 + len(self.calls), status="queued"
        )


def every_send_answered(runner: CampaignRunner) -> None:
    """Wait (in real time, at most 10 s) until every send in flight has its answer."""
    deadline = time.monotonic() + 10
    while any(answered[0] is None for answered in list(runner.answered)):
        assert time.monotonic() < deadline, "a send never answered"
        time.sleep(0.001)


def test_attempts_grouped_ahead_and_never_sent_are_refused_when_the_campaign_stops(tmp_path: Path) -> None:
    """20 sends/s with 100 ms per ledger write: the attempts of the sends due during a write go
    in one write; when the campaign stops, those not yet sent are refused (nothing was sent), not
    left in flight, so a cleared task sends them."""
    clock = FakeClock()
    hook = BalanceRunsOut()
    settings = CampaignSettings(
        sender_id=12, template_id=1, max_sends_per_second=20, resend_unknown=False, offline_timeout=10
    )
    identity = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1}
    with CampaignLedger.open(tmp_path, **identity, try_number=1) as ledger:
        slow = SlowWrites(ledger, clock, 0.1)
        runner = CampaignRunner(hook, settings, slow, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
        runner.attempt_seconds = 0.1  # as measured on the writes before
        clock.settle = lambda: every_send_answered(runner)
        with pytest.raises(CampaignStopped, match="Nothing more was sent"):
            runner.run([{"recipient_phone": phone} for phone in PHONES], len(PHONES))

        assert slow.groups == [PHONES[:3]]  # one write for the three sends due during it
        assert hook.calls == PHONES[:1]  # the 402 stopped the campaign before the second send
        assert ledger.state == dict.fromkeys(PHONES[:3], "refused")
    records = {r["recipient_phone"]: r["error"] for r in read_campaign_ledger(ledger.path)}
    assert records[PHONES[1]] == records[PHONES[2]] == "the campaign stopped before this send"


class Accepts:
    """Answers every send at once, noting the (fake) time of each."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, float]] = []

    def send_whatsapp_template(self, sender_id: int, template_id: int, phone: str, **_: Any) -> Any:
        self.calls.append((phone, self.clock()))
        return SimpleNamespace(
            message_id=len(self.calls), whatsapp_message_id=900 + len(self.calls), status="queued"
        )


def test_a_ledger_write_of_50_ms_does_not_slow_the_pace_of_5_per_second(tmp_path: Path) -> None:
    """The window's wait ends early by the write's time, so the write overlaps it: 11 sends at 5/s
    span about 2.0 s (not 2.1 s: five sends per 1.05 s, the write added to each window)."""
    clock = FakeClock()
    hook = Accepts(clock)
    settings = CampaignSettings(
        sender_id=12, template_id=1, max_sends_per_second=5, resend_unknown=False, offline_timeout=10
    )
    phones = [f"+1415555{n:04d}" for n in range(11)]
    identity = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1}
    with CampaignLedger.open(tmp_path, **identity, try_number=1) as ledger:
        slow = SlowWrites(ledger, clock, 0.05)
        runner = CampaignRunner(hook, settings, slow, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
        clock.settle = lambda: every_send_answered(runner)
        runner.run([{"recipient_phone": phone} for phone in phones], len(phones))

    times = [at for _, at in hook.calls]
    assert [phone for phone, _ in hook.calls] == phones
    assert all(len(group) == 1 for group in slow.groups)  # 50 ms < 200 ms between sends: no grouping
    assert times[-1] - times[0] < 2.05, times
    # ... and the API's window still holds: never more than 5 sends in any second.
    assert all(later - earlier >= 1.0 - 1e-6 for earlier, later in zip(times, times[5:], strict=False))
