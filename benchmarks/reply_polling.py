"""Benchmark: 1,000 deferred reply sensors on one account with 10,000 conversations (the sandbox).

Runs 1,000 ``WhatsAppReplyTrigger``s in one event loop, as a triggerer does, against the sandbox
over real HTTP on 127.0.0.1, each waiting for a different customer of an account with 10,000
WhatsApp conversations, twice: coalesced (as shipped: one ``ConversationPoller`` per
connection) and one poll per sensor (each trigger with its own poller: one filtered listing per
trigger per interval, what a sensor polling on its own costs). Prints per run:

- API requests per interval (one poll of every waiting trigger) in the steady state, and the
  reads once ``--answers`` customers answered; how long an interval took against the sandbox,
- the event loop's worst lag (how late a 10 ms timer fired),
- traced memory per waiting trigger (tracemalloc, measured in a separate pass),
- how long an interval must be at the default budget of 50 requests/minute.

The budget is lifted for the measurement (connection extra ``poll_requests_per_minute``) so the
figures show what one interval costs, not the budget's pacing.

Usage: ``python benchmarks/reply_polling.py [--triggers 1000] [--conversations 10000]
[--interval 2] [--intervals 3] [--answers 10]``. Not a timed test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
import tracemalloc
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any
from unittest import mock

from trigger_loop import first_event, quiet_logs, watch_lag

from famulor_provider.get_provider_info import DEFAULT_POLL_REQUESTS_PER_MINUTE
from famulor_provider.testing import FamulorSandbox
from famulor_provider.triggers import whatsapp as trigger_module
from famulor_provider.triggers.whatsapp import ConversationPoller, WhatsAppReplyTrigger

SENDER = "+14155551234"  # sender 12 of the sandbox's seed data
LIST_PATH = "/api/user/conversations"
READ_PREFIX = "/api/conversations/"


def customer(n: int) -> str:
    return f"+49170{n:07d}"


@dataclass
class Run:
    requests_per_interval: float
    reads_after_answers: int
    seconds_per_interval: float
    worst_lag_ms: float
    answered: int
    memory_per_trigger_kib: float = 0.0
    requests_needed: float = 0.0


_created: list[ConversationPoller] = []


def _per_trigger_pollers() -> AbstractContextManager[Any]:
    """The baseline: every trigger polls on its own (its own poller, a filtered listing)."""

    def own_poller(famulor_conn_id: str) -> ConversationPoller:
        poller = ConversationPoller(famulor_conn_id)
        _created.append(poller)
        return poller

    return mock.patch.object(trigger_module, "conversation_poller", own_poller)


def _pollers(coalesced: bool) -> list[ConversationPoller]:
    return list(trigger_module._pollers.values()) if coalesced else list(_created)


async def _rounds_done(coalesced: bool, rounds: int, timeout: float = 600) -> None:
    """Wait until every poller (one shared, or one per trigger) has finished ``rounds`` rounds."""
    deadline = time.monotonic() + timeout
    while not (_pollers(coalesced) and min(p.rounds for p in _pollers(coalesced)) >= rounds):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the pollers did not finish {rounds} rounds in {timeout:g} s")
        await asyncio.sleep(0.05)


def _requests(sandbox: FamulorSandbox) -> tuple[int, int]:
    paths = [r.path for r in sandbox.requests]
    return sum(1 for p in paths if p == LIST_PATH), sum(1 for p in paths if p.startswith(READ_PREFIX))


def _waited(count: int, conversations: int) -> list[int]:
    step = max(1, conversations // count)
    return [n * step for n in range(count)]


async def _start(customers: list[int], interval: float) -> list[asyncio.Task[dict[str, Any]]]:
    """Start the triggers spread over one interval, as sensors defer at different moments."""
    tasks = []
    batches = 10
    for i, n in enumerate(customers):
        trigger = WhatsAppReplyTrigger(
            recipient_phone=customer(n),
            sender_phone=SENDER,
            baseline=1,
            choices=["YES"],
            poll_interval=interval,
        )
        tasks.append(asyncio.ensure_future(first_event(trigger)))
        if (i + 1) % max(1, len(customers) // batches) == 0:
            await asyncio.sleep(interval / batches)
    return tasks


async def _timed_run(
    sandbox: FamulorSandbox,
    customers: list[int],
    interval: float,
    intervals: int,
    answers: int,
    coalesced: bool,
) -> Run:
    """Requests for one poll of every waiting trigger (one interval), measured over ``intervals``.

    Coalesced, an interval is one round of the shared poller, however long it takes. One poll per
    sensor, it is ``interval`` seconds (the loop falls behind: what it achieved is reported).
    """
    _created.clear()
    stop, worst = asyncio.Event(), [0.0]
    watcher = asyncio.ensure_future(watch_lag(stop, worst))
    tasks = await _start(customers, interval)
    if coalesced:
        await _rounds_done(coalesced, 1)  # every trigger has polled once: the steady state
        first = min(p.rounds for p in _pollers(coalesced))
    lists_before, _ = _requests(sandbox)
    started = time.monotonic()
    if coalesced:
        await _rounds_done(coalesced, first + intervals)
        rounds = min(p.rounds for p in _pollers(coalesced)) - first
    else:
        await asyncio.sleep(interval * intervals)
        rounds = intervals
    steady = (_requests(sandbox)[0] - lists_before) / rounds
    seconds = (time.monotonic() - started) / rounds
    _, reads_before = _requests(sandbox)
    for n in customers[:answers]:
        sandbox.receive(SENDER, customer(n), "Yes")
    if coalesced:
        done = min(p.rounds for p in _pollers(coalesced))
        await _rounds_done(coalesced, done + 2)  # the round that sees the answers, and its reads
    await asyncio.sleep(interval * 2)
    answered = sum(1 for t in tasks if t.done() and not t.cancelled() and t.result()["status"] == "success")
    reads = _requests(sandbox)[1] - reads_before
    stop.set()
    await watcher
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rounds_left = [p._round for p in _pollers(coalesced) if p._round is not None and not p._round.done()]
    for round_task in rounds_left:  # rounds outlive their triggers (shielded): end them before the loop
        round_task.cancel()
    await asyncio.gather(*rounds_left, return_exceptions=True)
    return Run(steady, reads, seconds, worst[0] * 1000, answered)


async def _memory_per_trigger(customers: list[int], interval: float) -> float:
    """Traced memory held per waiting trigger, after every trigger has polled."""
    tracemalloc.start()
    baseline = tracemalloc.take_snapshot()
    tasks = await _start(customers, interval)
    await asyncio.sleep(interval * 2)
    held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(baseline, "filename"))
    tracemalloc.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return held / len(customers) / 1024


def measure(
    sandbox: FamulorSandbox,
    customers: list[int],
    interval: float,
    intervals: int,
    answers: int,
    coalesced: bool,
) -> Run:
    with nullcontext() if coalesced else _per_trigger_pollers():
        run = asyncio.run(_timed_run(sandbox, customers, interval, intervals, answers, coalesced))
        # The answered customers' conversations grew: the memory pass waits on the others only.
        run.memory_per_trigger_kib = asyncio.run(_memory_per_trigger(customers[answers:], interval))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=2.0, help="poll interval in seconds")
    parser.add_argument("--intervals", type=int, default=3, help="steady-state intervals measured")
    parser.add_argument("--answers", type=int, default=10, help="customers who answer in one interval")
    args = parser.parse_args()
    quiet_logs(logging.ERROR)  # one poll per sensor also logs each timed-out request

    with FamulorSandbox() as sandbox:
        conn = json.loads(sandbox.connection_json())
        conn["extra"] = {"timeout": 30, "max_retries": 0, "poll_requests_per_minute": 1_000_000}
        os.environ["AIRFLOW_CONN_FAMULOR_DEFAULT"] = json.dumps(conn)
        started = time.monotonic()
        for n in range(args.conversations):
            sandbox.add_conversation(
                SENDER, customer(n), history=[{"role": "assistant", "content": "Confirm?"}]
            )
        print(
            f"{args.triggers:,} reply triggers on one connection, {args.conversations:,} conversations "
            f"(set up in {time.monotonic() - started:.1f} s), poll interval {args.interval:g} s, "
            f"{args.intervals} intervals measured, {args.answers} customers answering"
        )
        customers = _waited(args.triggers, args.conversations)
        started = time.monotonic()
        coalesced = measure(sandbox, customers, args.interval, args.intervals, args.answers, coalesced=True)
        sandbox.clear_faults()
        per_sensor = measure(
            sandbox, customers[::-1], args.interval, args.intervals, args.answers, coalesced=False
        )

    per_sensor.requests_needed = float(args.triggers)  # one filtered listing per sensor per interval
    coalesced.requests_needed = coalesced.requests_per_interval
    rows = [  # label, field, format, whether "per sensor / coalesced" means something
        ("requests needed per interval", "requests_needed", "{:,.1f}", True),
        ("requests done per interval", "requests_per_interval", "{:,.1f}", False),
        (f"reads after {args.answers} answers", "reads_after_answers", "{:,}", False),
        ("seconds per interval", "seconds_per_interval", "{:,.1f}", True),
        ("worst event-loop lag (ms)", "worst_lag_ms", "{:,.1f}", True),
        ("memory per trigger (KiB)", "memory_per_trigger_kib", "{:,.1f}", True),
        ("triggers that got the answer", "answered", "{:,}", False),
    ]
    print(f"{'':30}{'coalesced':>12}{'per sensor':>14}{'ratio':>10}")
    for label, name, fmt, compare in rows:
        ours, theirs = getattr(coalesced, name), getattr(per_sensor, name)
        ratio = f"{theirs / ours:,.1f}x" if compare and ours else ""
        print(f"{label:30}{fmt.format(ours):>12}{fmt.format(theirs):>14}{ratio:>10}")
    pages = -(-args.conversations // 100)
    budget = 60.0 / DEFAULT_POLL_REQUESTS_PER_MINUTE
    print(
        f"(ran {time.monotonic() - started:.0f} s. At the default budget of "
        f"{DEFAULT_POLL_REQUESTS_PER_MINUTE:g} requests/minute an interval of {pages} pages + "
        f"{args.answers} reads lasts at least {(pages + args.answers) * budget:.0f} s coalesced; one poll "
        f"per sensor, {args.triggers:,} requests, {args.triggers * budget:.0f} s)"
    )


if __name__ == "__main__":
    main()
