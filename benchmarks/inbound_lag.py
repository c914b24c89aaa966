"""Benchmark: message -> event lag of the inbound trigger on a busy account, new schedule vs old.

One account of 3,000 WhatsApp conversations (the sandbox over real HTTP on 127.0.0.1, listing
ordered by activity); customers write ``--rate`` messages per second spread over 50 of them;
the trigger's producer (``InboundProducer.open_stream``, the code the triggerer runs) polls every
``--interval`` seconds at the default polling budget (50 requests per minute). Two producers run
side by side on the same messages, each on its own connection (its own budget):

- **spread**: the full pass spread over the polls (a sweep of a few pages per poll), the default;
- **every 10th**: every 10th poll walks every page (30 here), the schedule before.

It prints, per schedule: messages written, events (none lost, none doubled), the lag from a
message's write to its event (median, p95, max) against the goal (p95 within twice the interval
plus 5 s), and the most requests one poll made.

To stay well under two minutes the clock is scaled by ``--scale`` (default 3): the interval, the
rate, the budget and the budget's burst are scaled, and every figure is printed in account
seconds (measured seconds times the scale). ``--scale 1`` runs in real time (about 4 minutes).

Usage: ``python benchmarks/inbound_lag.py [--rate 0.5] [--interval 10] [--scale 3] [--seconds 240]``.
Not a timed test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import time
from dataclasses import dataclass, field

from famulor_provider.conversations import polling
from famulor_provider.conversations.inbound_poll import DEFAULT_FULL_PASS_EVERY, InboundProducer
from famulor_provider.get_provider_info import DEFAULT_POLL_REQUESTS_PER_MINUTE
from famulor_provider.testing import FamulorSandbox

SENDER = "+4930901820"
ACCOUNT = 3_000
ACTIVE = 50


@dataclass
class Run:
    """One schedule's producer and what it saw."""

    name: str
    conn_id: str
    spread: bool
    producer: InboundProducer | None = None
    events: dict[str, float] = field(default_factory=dict)  # dedupe_key -> when the event came
    duplicates: int = 0
    most_requests: int = 0


def _setup(sandbox: FamulorSandbox) -> list[str]:
    phones = [f"+4915{n:09d}" for n in range(ACCOUNT)]
    start = time.time() - 86_400 - ACCOUNT
    for k, phone in enumerate(phones):
        cid = sandbox.add_conversation(SENDER, phone, history=[{"role": "user", "content": "hi"}])
        sandbox._conversation_index.by_id[cid].updated_at = start + k  # last active in the past
    return phones


def _connection(sandbox: FamulorSandbox, conn_id: str, requests_per_minute: float) -> None:
    conn = json.loads(sandbox.connection_json())
    conn["extra"]["poll_requests_per_minute"] = requests_per_minute
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)


async def _baseline(run: Run, interval: float) -> None:
    """Start the producer from a baseline taken on a connection without a budget (not measured)."""
    producer = run.producer = InboundProducer(
        famulor_conn_id=run.conn_id,
        sender_phone=SENDER,
        customer_phone=None,
        poll_interval=interval,
        stores=list,
        key_prefix=run.name,
        spread_full_pass=run.spread,
    )
    fast = InboundProducer(
        famulor_conn_id="famulor_fast",
        sender_phone=SENDER,
        customer_phone=None,
        poll_interval=interval,
        stores=list,
        key_prefix="fast",
    )
    template = await fast.start()
    poller = producer.poller = producer._new_poller()
    poller.cursor = template.cursor
    poller.ordered_by_activity, poller.high_water = template.ordered_by_activity, template.high_water
    poller.listing_pages = template.listing_pages


async def _consume(run: Run) -> None:
    assert run.producer is not None and run.producer.poller is not None
    loop = asyncio.get_running_loop()
    async for update, _ in run.producer.open_stream():
        stats = run.producer.poller.stats
        run.most_requests = max(run.most_requests, stats.pages + stats.reads)
        if update is None:
            continue
        for event in update.events():
            if event["dedupe_key"] in run.events:
                run.duplicates += 1
            run.events.setdefault(event["dedupe_key"], loop.time())
        run.producer.settle(update, stored=True)


async def _customers(
    sandbox: FamulorSandbox, phones: list[str], rate: float, seconds: float, written: dict[str, float]
) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(5)
    active = rng.sample(phones, ACTIVE)
    deadline = loop.time() + seconds
    n = 0
    while loop.time() < deadline:
        receipt = sandbox.receive(SENDER, rng.choice(active), f"message {n}")
        written[f"{receipt['conversation_id']}:{receipt['message_index']}"] = loop.time()
        n += 1
        await asyncio.sleep(rng.expovariate(rate))


async def _measure(sandbox: FamulorSandbox, args: argparse.Namespace) -> tuple[dict[str, float], list[Run]]:
    scale = args.scale
    interval = args.interval / scale
    runs = [Run("spread", "famulor_spread", True), Run("every 10th", "famulor_every10", False)]
    for run in runs:
        _connection(sandbox, run.conn_id, DEFAULT_POLL_REQUESTS_PER_MINUTE * scale)
        await _baseline(run, interval)
    written: dict[str, float] = {}
    consumers = [asyncio.create_task(_consume(run)) for run in runs]
    await _customers(sandbox, _PHONES, args.rate * scale, args.seconds / scale, written)
    loop = asyncio.get_running_loop()
    drain = loop.time() + 6 * interval + 60 / scale
    while loop.time() < drain and not all(set(written) <= set(run.events) for run in runs):
        await asyncio.sleep(0.05)
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    return written, runs


_PHONES: list[str] = []


def _report(written: dict[str, float], runs: list[Run], args: argparse.Namespace) -> None:
    scale = args.scale
    goal = 2 * args.interval + 5
    print(
        f"{ACCOUNT:,} conversations, customers writing {args.rate:g} messages/s over {ACTIVE} of them for "
        f"{args.seconds:g} s; poll_interval {args.interval:g} s; budget {DEFAULT_POLL_REQUESTS_PER_MINUTE} "
        f"requests/min; clock scaled x{scale:g} (figures in account seconds)"
    )
    for run in runs:
        lags = sorted((run.events[key] - at) * scale for key, at in written.items() if key in run.events)
        lost = len(set(written) - set(run.events))
        extra = len(set(run.events) - set(written))
        p95 = lags[max(0, round(0.95 * len(lags)) - 1)] if lags else float("nan")
        print(
            f"{run.name:>10}: {len(written)} messages, {len(lags)} events ({lost} lost, "
            f"{run.duplicates} doubled, {extra} not written); "
            f"lag median {statistics.median(lags):.1f} s, p95 {p95:.1f} s, "
            f"max {lags[-1]:.1f} s (goal p95 <= {goal:g} s: {'met' if p95 <= goal else 'NOT met'}); "
            f"most requests in one poll: {run.most_requests}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=0.5, help="messages per second (account time)")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="poll_interval in seconds (account time)"
    )
    parser.add_argument("--scale", type=float, default=3.0, help="account seconds per measured second")
    parser.add_argument(
        "--seconds", type=float, default=240.0, help="how long customers write (account time)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("famulor_provider").setLevel(logging.ERROR)  # the figures, not the poll lines
    assert DEFAULT_FULL_PASS_EVERY == 10
    # The budget's burst (6 s of slots) is scaled with the clock too.
    polling.POLLING_BUDGET = polling.PollingBudget(burst_seconds=polling.BURST_SECONDS / args.scale)
    with FamulorSandbox(conversation_order="updated_desc") as sandbox:
        _connection(sandbox, "famulor_fast", 10_000_000)
        _PHONES.extend(_setup(sandbox))
        written, runs = asyncio.run(_measure(sandbox, args))
    _report(written, runs, args)


if __name__ == "__main__":
    main()
