"""Benchmark: an alert flood. ``--tasks`` (20) failure callbacks fire at once, each messaging
``--recipients`` (2) on-call numbers, against ``FamulorSandbox`` with the API's 5 sends/s limit and
``--extra-429`` (10) more 429 answers (``Retry-After: --retry-after``, 3 s) injected on top.

Each callback runs in its own thread with its own send pacer, as callbacks in separate worker
processes would. Four rounds, each on a fresh sandbox:

- per task, ``rate_limit_patience=300`` (the default) and ``rate_limit_patience=0`` (only the
  connection's own retries: the sandbox connection allows 2);
- ``once_per_dag_run=True`` (all callbacks in one DAG run), and the same once more as a second run.

For each: alerts delivered / wanted, callbacks that raised, POSTs and 429 answers, billed messages,
wall time and the slowest callback. Not a timed test: the figures depend on the machine.

Usage: ``python benchmarks/alert_storm.py [--tasks 20] [--recipients 2]``
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any
from unittest import mock

os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")  # the table, not the task lines

from airflow.providers.common.compat.sdk import DAG

from famulor_provider.notifications.whatsapp import WhatsAppNotifier
from famulor_provider.pacing import SEND_INTERVAL, SendPacer
from famulor_provider.testing import FamulorSandbox


def phones(n: int) -> list[str]:
    return [f"+1415555{101 + i:04d}" for i in range(n)]


def fire(args: argparse.Namespace, sandbox: FamulorSandbox, run_ids: list[str], **kwargs: Any) -> dict:
    """Fire ``args.tasks`` callbacks at once per run id; what came of it."""
    dag = DAG(dag_id="etl", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
    durations: list[float] = []
    errors: list[Exception] = []
    lock = threading.Lock()
    started = time.monotonic()
    for run_id in run_ids:
        callbacks = []
        for i in range(args.tasks):
            alert = WhatsAppNotifier(
                sender_id=12,
                recipients=phones(args.recipients),
                template_id=1201,
                variables={"1": "{{ ti.task_id }}@{{ run_id }}"},
                **kwargs,
            )
            ctx = {
                "dag": dag,
                "ti": SimpleNamespace(task_id=f"task_{i:02d}"),
                "run_id": run_id,
                "dag_run": SimpleNamespace(dag_id="etl", run_id=run_id),
            }
            alert.render_template_fields(ctx)  # type: ignore[arg-type]
            alert.hook.send_pacer = SendPacer(SEND_INTERVAL)  # as in its own worker process
            callbacks.append((alert, ctx))
        barrier = threading.Barrier(len(callbacks))

        def callback(alert: WhatsAppNotifier, ctx: dict[str, Any], barrier: threading.Barrier) -> None:
            barrier.wait()
            begun = time.monotonic()
            try:
                alert.notify(ctx)  # type: ignore[arg-type]
            except Exception as err:
                with lock:
                    errors.append(err)
            with lock:
                durations.append(time.monotonic() - begun)

        threads = [threading.Thread(target=callback, args=(*pair, barrier)) for pair in callbacks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.timeout)
    posts = [r for r in sandbox.requests if r.method == "POST"]
    ledger = sandbox.ledger
    # An alert is one (recipient, task, run); with once_per_dag_run, one (recipient, run).
    once = kwargs.get("once_per_dag_run", False)
    keys = Counter(
        (m["recipient_phone"], m["variables"]["1"].split("@")[1] if once else m["variables"]["1"])
        for m in ledger
    )
    return {
        "delivered": len(keys),
        "billed": len(ledger),
        "twice": sum(n - 1 for n in keys.values()),
        "raised": len(errors),
        "posts": len(posts),
        "answered_429": len(posts) - len(ledger),
        "wall_s": time.monotonic() - started,
        "slowest_s": max(durations, default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--recipients", type=int, default=2)
    parser.add_argument("--extra-429", type=int, default=10)
    parser.add_argument("--retry-after", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("famulor_provider").setLevel(logging.ERROR)
    wanted = args.tasks * args.recipients

    rounds: list[tuple[str, list[str], dict[str, Any], int]] = [
        ("per task, rate_limit_patience=300", ["run_1"], {}, wanted),
        ("per task, rate_limit_patience=0", ["run_1"], {"rate_limit_patience": 0}, wanted),
        ("once_per_dag_run=True, 1 run", ["run_1"], {"once_per_dag_run": True}, args.recipients),
        (
            "once_per_dag_run=True, 2 runs",
            ["run_1", "run_2"],
            {"once_per_dag_run": True},
            2 * args.recipients,
        ),
    ]
    print(
        f"{args.tasks} callbacks x {args.recipients} recipients at once; sandbox 5 sends/s and "
        f"{args.extra_429} extra 429s (Retry-After: {args.retry_after} s)"
    )
    header = f"{'round':<36}{'alerts':>9}{'billed':>8}{'twice':>7}{'raised':>8}{'POSTs':>7}{'429s':>6}"
    print(header + f"{'wall s':>8}{'slowest s':>11}")
    for name, run_ids, kwargs, want in rounds:
        with tempfile.TemporaryDirectory() as claims, FamulorSandbox() as sandbox:
            sandbox.inject(
                "status",
                path="/user/whatsapp/send",
                status=429,
                retry_after=args.retry_after,
                times=args.extra_429,
            )
            with mock.patch.dict(os.environ, sandbox.env()):
                if kwargs.get("once_per_dag_run"):
                    kwargs = {**kwargs, "claims_folder": claims}
                r = fire(args, sandbox, run_ids, **kwargs)
        print(
            f"{name:<36}{r['delivered']:>5}/{want:<3}{r['billed']:>8}{r['twice']:>7}{r['raised']:>8}"
            f"{r['posts']:>7}{r['answered_429']:>6}{r['wall_s']:>8.1f}{r['slowest_s']:>11.1f}"
        )


if __name__ == "__main__":
    main()
