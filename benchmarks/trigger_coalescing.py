"""Benchmark: 1,000 WhatsAppSenderTriggers polling one Famulor connection (the local sandbox).

Runs the triggers in one event loop, as a triggerer does, against the sandbox over real HTTP on
127.0.0.1, twice: coalesced (as shipped) and uncoalesced (one request per trigger per poll,
like upstream HTTP sensor triggers), and prints per run:

- requests the account receives per poll interval, and trigger polls answered per interval,
- the event loop's worst lag (how late a 10 ms timer fired) and, for comparison, the longest
  garbage-collector pause in the same run (a full collection over Airflow's heap),
- traced memory per waiting trigger (tracemalloc, measured in a separate pass).

Usage: ``python benchmarks/trigger_coalescing.py [--triggers 1000] [--interval 1] [--intervals 5]``.
Not a timed test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import time
import tracemalloc
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from unittest import mock

from trigger_loop import first_event, quiet_logs, watch_lag

from famulor_provider.models import SenderCriteria
from famulor_provider.testing import FamulorSandbox
from famulor_provider.triggers import whatsapp as trigger_module
from famulor_provider.triggers.whatsapp import WhatsAppSenderTrigger

SENDERS_PATH = "/api/user/whatsapp/senders"
WAITED_SENDER = 31  # offline in the sandbox's seed data; brought online to end each run
CRITERIA = SenderCriteria.parse(
    online_only=True, excluded_quality_ratings=["RED"], sender_ids=[WAITED_SENDER]
)


@dataclass
class Run:
    requests_per_interval: float
    polls_per_interval: float
    worst_lag_ms: float
    longest_gc_pause_ms: float
    succeeded: int
    memory_per_trigger_kib: float = 0.0


async def _uncoalesced(famulor_conn_id: str, *, max_age: float, status: str = "all") -> Any:
    """The baseline: every trigger sends its own request on every poll."""
    from famulor_provider.hooks.famulor import FamulorHook

    return await FamulorHook(famulor_conn_id).alist_whatsapp_senders(status=status, max_retries=0)


def _counting_polls(coalesced: bool, polls: list[int]) -> AbstractContextManager[Any]:
    """Route the triggers' polls through the coalescer (or around it), counting them."""
    fetch = trigger_module.shared_senders if coalesced else _uncoalesced

    async def poll(famulor_conn_id: str, *, max_age: float, status: str = "all") -> Any:
        senders = await fetch(famulor_conn_id, max_age=max_age, status=status)
        polls[0] += 1
        return senders

    return mock.patch.object(trigger_module, "shared_senders", poll)


async def _start(count: int, interval: float) -> list[asyncio.Task[dict[str, Any]]]:
    """Start the triggers spread over one interval, as sensors defer at different moments."""
    tasks = []
    batches = 10
    for i in range(count):
        trigger = WhatsAppSenderTrigger(criteria=CRITERIA, poll_interval=interval)
        tasks.append(asyncio.ensure_future(first_event(trigger)))
        if (i + 1) % max(1, count // batches) == 0:
            await asyncio.sleep(interval / batches)
    return tasks


class _GCPauses:
    """The longest garbage-collector pause while active (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)

    def __enter__(self) -> _GCPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


def _sender_requests(sandbox: FamulorSandbox) -> int:
    return sum(1 for r in sandbox.requests if r.path == SENDERS_PATH)


async def _timed_run(
    sandbox: FamulorSandbox, count: int, interval: float, intervals: int, polls: list[int]
) -> Run:
    stop, worst = asyncio.Event(), [0.0]
    with _GCPauses() as gc_pauses:
        watcher = asyncio.ensure_future(watch_lag(stop, worst))
        tasks = await _start(count, interval)
        before, polls_before = _sender_requests(sandbox), polls[0]
        await asyncio.sleep(interval * intervals)  # every trigger is waiting: the steady state
        sent, answered = _sender_requests(sandbox) - before, polls[0] - polls_before
        sandbox.set_sender(WAITED_SENDER, status="online")
        events = await asyncio.wait_for(asyncio.gather(*tasks), timeout=interval * 5 + 60)
        stop.set()
        await watcher
    succeeded = sum(1 for e in events if e["status"] == "success")
    return Run(sent / intervals, answered / intervals, worst[0] * 1000, gc_pauses.longest * 1000, succeeded)


async def _memory_per_trigger(count: int, interval: float) -> float:
    """Traced memory held per waiting trigger, after every trigger has polled once."""
    tracemalloc.start()
    baseline = tracemalloc.take_snapshot()
    tasks = await _start(count, interval)
    await asyncio.sleep(interval)
    held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(baseline, "filename"))
    tracemalloc.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return held / count / 1024


def measure(sandbox: FamulorSandbox, count: int, interval: float, intervals: int, coalesced: bool) -> Run:
    polls = [0]
    with _counting_polls(coalesced, polls):
        sandbox.set_sender(WAITED_SENDER, status="offline")
        run = asyncio.run(_timed_run(sandbox, count, interval, intervals, polls))
        sandbox.set_sender(WAITED_SENDER, status="offline")
        run.memory_per_trigger_kib = asyncio.run(_memory_per_trigger(count, interval))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval in seconds")
    parser.add_argument("--intervals", type=int, default=5, help="intervals measured in the steady state")
    args = parser.parse_args()
    quiet_logs(logging.WARNING)

    with FamulorSandbox() as sandbox:
        os.environ.update(sandbox.env())
        print(
            f"{args.triggers:,} triggers on one connection, poll interval {args.interval:g} s, "
            f"{args.intervals} intervals measured, sandbox {sandbox.base_url}"
        )
        # Warm up as a triggerer that already ran a trigger: the hook, httpx and the connection.
        asyncio.run(trigger_module.shared_senders("famulor_default", max_age=0))
        started = time.monotonic()
        coalesced = measure(sandbox, args.triggers, args.interval, args.intervals, coalesced=True)
        baseline = measure(sandbox, args.triggers, args.interval, args.intervals, coalesced=False)

    rows = [  # label, field, format, whether "uncoalesced / coalesced" means something
        ("requests per interval", "requests_per_interval", "{:,.1f}", True),
        ("trigger polls per interval", "polls_per_interval", "{:,.1f}", False),
        ("worst event-loop lag (ms)", "worst_lag_ms", "{:,.1f}", True),
        ("longest GC pause (ms)", "longest_gc_pause_ms", "{:,.1f}", False),
        ("memory per trigger (KiB)", "memory_per_trigger_kib", "{:,.1f}", True),
        ("triggers that succeeded", "succeeded", "{:,}", False),
    ]
    print(f"{'':28}{'coalesced':>12}{'uncoalesced':>14}{'baseline ratio':>16}")
    for label, name, fmt, compare in rows:
        ours, theirs = getattr(coalesced, name), getattr(baseline, name)
        ratio = f"{theirs / ours:,.1f}x" if compare and ours else ""
        print(f"{label:28}{fmt.format(ours):>12}{fmt.format(theirs):>14}{ratio:>16}")
    print(
        f"(ran {time.monotonic() - started:.0f} s; uncoalesced, every poll would be a request: "
        f"{args.triggers:,} per interval, where the loop and the server keep up)"
    )


if __name__ == "__main__":
    main()
