"""Benchmark: what one inbound poll costs for 1,000 / 10,000 / 100,000 WhatsApp conversations.

For each account size, against the local sandbox over real HTTP on 127.0.0.1 (listing ordered by
activity, conversations last active in the past), with the polling budget lifted so that the
walk itself is measured, it prints:

- the requests and duration of the baseline (first start), of a full poll and of an early-stop
  poll, each after ``--changed`` conversations got a customer message; and the duration the
  default budget (50 requests per minute) imposes on those requests,
- the cursor in the asset state store: total bytes, bytes per conversation, the largest value
  (Airflow's default limit is 65,535 bytes), against a naive JSON ``{uuid: count}`` map in the
  same run; the bucket count; what one advance writes (one value: the journal),
- the cursor's memory in the trigger (tracemalloc) per conversation.

Usage: ``python benchmarks/inbound_polling.py [--sizes 1000 10000 100000] [--changed 10]``.
Not a timed test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_state_store import MAX_VALUE_STORAGE_BYTES, FakeAssetStateStore

from famulor_provider.conversations.inbound_cursor import CursorStore
from famulor_provider.conversations.inbound_poll import InboundPoller
from famulor_provider.get_provider_info import DEFAULT_POLL_REQUESTS_PER_MINUTE
from famulor_provider.testing import FamulorSandbox

SENDER = "+4930901820"


def _setup(sandbox: FamulorSandbox, size: int) -> list[str]:
    phones = [f"+4915{n:09d}" for n in range(size)]
    start = time.time() - 86_400 - size
    for k, phone in enumerate(phones):
        cid = sandbox.add_conversation(SENDER, phone, history=[{"role": "user", "content": "hi"}])
        sandbox._conversation_index.by_id[cid].updated_at = start + k  # last active in the past
    return phones


async def _poll(poller: InboundPoller) -> tuple[int, int, float, int]:
    started = time.perf_counter()
    updates = 0
    async for update in poller.poll():
        updates += 1
        poller.acknowledge(update.conversation_id, update.start, update.end)
    stats = poller.stats
    return stats.pages, stats.reads, time.perf_counter() - started, updates


def _budget_seconds(requests: int) -> float:
    return requests * 60.0 / DEFAULT_POLL_REQUESTS_PER_MINUTE


async def _measure(sandbox: FamulorSandbox, size: int, changed: int) -> dict[str, Any]:
    from famulor_provider.hooks.famulor import FamulorHook

    phones = _setup(sandbox, size)
    poller = InboundPoller(FamulorHook(), sender_phone=SENDER, full_pass_every=10)
    started = time.perf_counter()
    cursor = await poller.take_baseline()
    baseline = (poller.stats.pages, time.perf_counter() - started)

    store = FakeAssetStateStore()
    saver = CursorStore([store], "famulor_inbound.bench")
    await saver.save(cursor)  # the first save: a compaction into buckets sized to the account
    total = sum(len(raw) for raw in store.values.values())
    naive = len(json.dumps({cid: cursor.get(cid) for cid in _ids(sandbox)}))

    results: dict[str, Any] = {"size": size, "baseline": baseline}
    for kind in ("early", "full"):
        if kind == "full":
            poller.ordered_by_activity = False  # the order unproven: the poll walks every page
        for n in range(changed):
            sandbox.receive(SENDER, phones[(n * 7919 + len(kind)) % size], f"{kind} {n}")
        results[kind] = await _poll(poller)
    writes_before = len(store.writes)
    await saver.save(poller.cursor)  # type: ignore[arg-type]  # an advance: the journal only
    advance = [(key, size) for key, size in store.writes[writes_before:]]

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    copy = await CursorStore([store], "famulor_inbound.bench").load()
    memory = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert copy is not None and len(copy) == size

    results.update(
        cursor_total=total,
        cursor_largest=store.largest_value(),
        naive=naive,
        advance=advance,
        buckets=json.loads(store.values["famulor_inbound.bench.meta"])["buckets"],
        memory=memory,
        oversized=store.oversized,
    )
    return results


def _ids(sandbox: FamulorSandbox) -> list[str]:
    return [c["id"] for c in sandbox.conversations]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--changed", type=int, default=10, help="conversations with a new message per poll")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(f"conversations with a new message before each poll: {args.changed}")
    for size in args.sizes:
        with FamulorSandbox() as sandbox:
            conn = json.loads(sandbox.connection_json())
            conn["extra"]["poll_requests_per_minute"] = 10_000_000  # measure the walk, not the budget
            os.environ["AIRFLOW_CONN_FAMULOR_DEFAULT"] = json.dumps(conn)
            r = asyncio.run(_measure(sandbox, size, args.changed))
        pages, seconds = r["baseline"]
        print(f"\n== {size:,} conversations")
        print(f"baseline (first start): {pages} requests, {seconds:.2f} s")
        for kind, label in (
            ("full", "full poll"),
            ("early", "early-stop poll (with its share of the sweep)"),
        ):
            pages, reads, seconds, updates = r[kind]
            requests = pages + reads
            print(
                f"{label}: {pages} pages + {reads} reads = {requests} requests, {seconds:.2f} s "
                f"({updates} conversations with new messages); at the default budget "
                f"({DEFAULT_POLL_REQUESTS_PER_MINUTE}/min): {_budget_seconds(requests):.0f} s"
            )
        print(
            f"cursor: {r['cursor_total']:,} bytes ({r['cursor_total'] / size:.1f} per conversation), "
            f"largest value {r['cursor_largest']:,} bytes (limit {MAX_VALUE_STORAGE_BYTES:,}); "
            f"naive JSON map {r['naive']:,} bytes ({r['naive'] / size:.1f} per conversation, "
            f"{r['naive'] / r['cursor_total']:.1f}x); over the limit: {r['oversized'] or 'none'}"
        )
        keys = ", ".join(f"{key.rsplit('.', 1)[-1]} {size:,} bytes" for key, size in r["advance"])
        print(f"buckets: {r['buckets']}; one advance after {args.changed} conversations moved wrote: {keys}")
        print(f"cursor memory in the trigger: {r['memory'] / size:.0f} bytes per conversation")


if __name__ == "__main__":
    main()
