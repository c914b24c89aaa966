"""Benchmark: delivery receipts per second the webhook receiver sustains in a real api-server.

An Airflow 3.1+ api-server alone (``tests/system/deployment.py``, SQLite, one worker, the provider's
plugin mounted) on 127.0.0.1. This process posts signed ``message_status`` receipts at fixed rates
(open loop: each receipt has its send time, so a slow answer delays none of the next ones and its
queueing counts in its latency), one new connection per receipt as a webhook sender makes them,
for ``--seconds`` per rate. Per rate: answers by status, latency p50/p99 (from the receipt's
scheduled time), and the api-server's CPU per receipt (its process tree, from ``psutil``).

The baseline, in the same run: the same rate of receipts with a wrong signature (401: the same
request path without the database write), so the ratio is what recording the event costs.

The rates stop at the first one whose p99 is over 1 s or that got a 5xx. At the end, the asset
events in the database are counted against the 200s. Bounded: about ``len(rates) * 2 * seconds``
plus the api-server's start (about 90 s with the defaults).

Usage: ``python benchmarks/webhook_receiver.py [--rates 50,100,150,200,300,400] [--seconds 6]``
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec-benchmark"
ASSET = "famulor.famulor_default.message_status"


def receipt(n: int) -> bytes:
    return json.dumps(
        {
            "event": "message_status",
            "whatsapp_message_id": 100000 + n,
            "message_sid": f"SM{n:032x}",
            "meta_message_id": f"wamid.BENCH{n:012d}",
            "conversation_id": "8d0f7780-1c2b-4d3e-9f00-1234567890ab",
            "assistant_id": "a1b2",
            "sender": {"id": 12, "phone_number": "+14155551234", "display_name": "Acme Corp Support"},
            "to": f"+49151{n:08d}",
            "from": "+14155551234",
            "direction": "outbound",
            "status": "delivered",
            "error_code": None,
            "error_message": None,
            "error_description": None,
            "timestamp": "2026-12-07T12:00:00.000000Z",
            "provider_timestamp": "2026-12-07T12:00:00.000000Z",
        }
    ).encode()


def sign(raw: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def run_rate(
    port: int, rate: float, seconds: float, first: int, secret: str, workers: int
) -> tuple[list[float], Counter[Any]]:
    """Post ``rate * seconds`` receipts at ``rate``/s; (latencies, answers by status)."""
    count = int(rate * seconds)
    bodies = [receipt(first + n) for n in range(count)]
    headers = [{"Content-Type": "application/json", "X-Signature-256": sign(b, secret)} for b in bodies]
    start = time.monotonic() + 0.2
    latencies: list[float] = []
    answers: Counter[Any] = Counter()
    lock = threading.Lock()
    next_index = iter(range(count))

    def worker() -> None:
        while True:
            with lock:
                n = next(next_index, None)
            if n is None:
                return
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request(
                    "POST", "/famulor/webhooks/famulor_default/message-status", bodies[n], headers[n]
                )
                response = connection.getresponse()
                response.read()
                status: Any = response.status
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
            finally:
                connection.close()
            with lock:
                latencies.append(time.monotonic() - due)
                answers[status] += 1

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds * 10 + 60)
    return latencies, answers


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="50,100,150,200,300,400", help="receipts per second, in order")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per rate")
    parser.add_argument("--workers", type=int, default=64, help="sending threads (concurrent receipts)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    sys.path.insert(0, str(REPO_ROOT / "tests" / "system"))
    from deployment import AIRFLOW_VERSION, AirflowDeployment

    if tuple(int(p) for p in AIRFLOW_VERSION.split(".")[:2]) < (3, 1):
        sys.exit(f"needs Airflow 3.1+ (FastAPI plugin apps); this is Airflow {AIRFLOW_VERSION}")
    conn = {"conn_type": "famulor", "password": "k", "extra": {"webhook_signing_secrets": SECRET}}
    with tempfile.TemporaryDirectory(prefix="famulor-webhook-bench-") as tmp:
        home = Path(tmp) / "airflow"
        (home / "dags").mkdir(parents=True)
        airflow = AirflowDeployment(
            home, {"AIRFLOW_CONN_FAMULOR_DEFAULT": json.dumps(conn)}, api_server_only=True
        )
        try:
            started = time.monotonic()
            airflow.up()
            airflow.wait_until("the api-server to answer", airflow.api_answers, timeout=240)
            pid = airflow.processes["api-server"].pid
            run_rate(airflow.api_port, 20, 1, 0, SECRET, 8)  # warm-up: the asset is created here
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(
                f"api-server ready in {time.monotonic() - started:.0f} s (Airflow {AIRFLOW_VERSION}); "
                f"{os.cpu_count()} CPUs, load average {load} (other jobs on the machine skew the figures)"
            )
            print(
                f"{'rate/s':>7} {'kind':<9} {'answers':<24} {'p50 ms':>7} {'p99 ms':>7} "
                f"{'CPU ms/receipt':>14} {'vs 401':>7}"
            )
            first, accepted, best = 1000, 20, None
            for rate in rates:
                rows = {}
                for kind, secret in (("401", "wrong-secret"), ("recorded", SECRET)):
                    cpu_before = tree_cpu(pid)
                    latencies, answers = run_rate(
                        airflow.api_port, rate, args.seconds, first, secret, args.workers
                    )
                    cpu = (tree_cpu(pid) - cpu_before) * 1000 / max(1, len(latencies))
                    first += len(latencies)
                    rows[kind] = cpu
                    if kind == "recorded":
                        accepted += answers.get(200, 0)
                    ratio = f"{cpu / rows['401']:.1f}x" if kind == "recorded" and rows["401"] else ""
                    print(
                        f"{rate:>7.0f} {kind:<9} {json.dumps(dict(answers)):<24} "
                        f"{percentile(latencies, 50) * 1000:>7.0f} {percentile(latencies, 99) * 1000:>7.0f} "
                        f"{cpu:>14.1f} {ratio:>7}",
                        flush=True,
                    )
                ok = percentile(latencies, 99) < 1.0 and not any(
                    isinstance(s, int) and s >= 500 for s in answers
                )
                ok = ok and answers.get(200, 0) == len(latencies)
                if not ok:
                    break
                best = rate
            events = airflow.query(
                "SELECT COUNT(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?", ASSET
            )[0][0]
            print(f"asset events recorded: {events} for {accepted} receipts answered 200")
            print(
                "sustained: "
                + (f"{best:.0f} receipts/s with p99 < 1 s and no 5xx" if best else "no rate met p99 < 1 s")
            )
        finally:
            airflow.stop()


if __name__ == "__main__":
    main()
