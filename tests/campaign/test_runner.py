"""The campaign loop with an injected clock: 429 holds overlap instead of adding up."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from famulor_provider.campaign.ledger import CampaignLedger
from famulor_provider.campaign.runner import CampaignRunner, CampaignSettings
from famulor_provider.exceptions import FamulorRateLimitError

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
