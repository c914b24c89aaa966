"""Benchmark: the sandbox's conversations at 100,000 (set-up and listing cost).

Fills a ``FamulorSandbox`` with N conversations through ``add_conversation`` (one message each),
then, for every listing order, times a page of 100 (the first, one from the middle through a
cursor, and one filtered by ``customer_phone``) over real HTTP on 127.0.0.1 and in-process
(``ConversationIndex.page``, the work behind the HTTP page), against the baseline a naive
listing would do per request: sort every conversation by the order key, then slice.

Usage: ``python benchmarks/sandbox_conversations.py [--conversations 100000] [--repeat 20]``.
Not a timed test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import requests

from famulor_provider.testing import CONVERSATION_ORDERS, SANDBOX_API_KEY, FamulorSandbox
from famulor_provider.testing.conversation_index import encode_cursor

SENDER_PHONE = "+4930901820"  # a seed sender
AUTH = {"Authorization": f"Bearer {SANDBOX_API_KEY}"}


def _median_ms(action: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(order: str, n: int, repeat: int) -> str:
    """One line of figures for one listing order.

    :param order: one of ``CONVERSATION_ORDERS``.
    :param n: how many conversations.
    :param repeat: runs per figure.
    """
    with FamulorSandbox(conversation_order=order) as sandbox:
        started = time.perf_counter()
        for i in range(n):
            sandbox.add_conversation(
                SENDER_PHONE, f"+4916{i:08d}", history=[{"role": "user", "content": "hi"}]
            )
        added = time.perf_counter() - started
        for i in range(0, n, max(1, n // 100)):  # 100 conversations become the most recent
            sandbox.receive(SENDER_PHONE, f"+4916{i:08d}", "again")
        index = sandbox._conversation_index
        middle = encode_cursor(index.key(index.created[n // 2]), True)
        session = requests.Session()
        url = f"{sandbox.base_url}/user/conversations"

        def get(**params: Any) -> None:
            response = session.get(url, params={"per_page": 100, **params}, headers=AUTH, timeout=30)
            assert response.status_code == 200 and len(response.json()["data"]) >= 1

        first_ms = _median_ms(get, repeat)
        middle_ms = _median_ms(lambda: get(cursor=middle), repeat)
        customer_ms = _median_ms(lambda: get(customer_phone=f"+4916{n // 3:08d}"), repeat)
        page_ms = _median_ms(lambda: index.page(100), repeat)
        descending = order in ("updated_desc", "created_desc")
        sort_ms = _median_ms(lambda: sorted(index.created, key=index.key, reverse=descending)[:100], repeat)
    return (
        f"{order:>13}: add_conversation {added:.2f} s ({added / n * 1e6:.1f} us each); "
        f"HTTP page of 100: first {first_ms:.1f} ms, mid-walk {middle_ms:.1f} ms, "
        f"one customer {customer_ms:.1f} ms; in-process page {page_ms:.2f} ms vs "
        f"sort-per-request {sort_ms:.1f} ms ({sort_ms / page_ms:.0f}x)"
    )


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{args.conversations:,} conversations, median of {args.repeat} runs per figure")
    for order in CONVERSATION_ORDERS:
        print(measure(order, args.conversations, args.repeat), flush=True)


if __name__ == "__main__":
    main()
