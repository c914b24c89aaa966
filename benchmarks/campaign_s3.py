"""Benchmark: a campaign's pace and S3 requests with its ledger on S3, against the POSIX ledger.

One command, two campaigns of ``--recipients`` (200) each through
``SendWhatsAppCampaignOperator.execute`` in this process, against the sandbox in its own process
with the API's send limit on (``--rate``, 5/s) and the campaign at the same pace:

1. the ledger in a local folder (POSIX: append, fsync, flock);
2. the ledger on S3: moto's server on 127.0.0.1 behind a proxy that adds ``--delay`` (50 ms)
   to every request (moto and the proxy in their own process, so their CPU is not counted).

For each: sends/s where the sandbox saw them (first to last ``accepted_at``), 429 answers,
duplicates, the S3 requests per recipient by kind (``PutObject``, ``GetObject``, ``ListObjectsV2``:
every HTTP request botocore sent, retries included), and what they cost per 100,000
recipients at S3 Standard's request prices (us-east-1: PUT/LIST $0.005 per 1,000, GET $0.0004
per 1,000; the price list as published in 2025). Then the ratio S3 / POSIX, and how long a retry
of the S3 campaign takes to read the log (``CampaignLedger.open`` with try 2). Exits non-zero on a
duplicate or a recipient not billed.

1,000 recipients at 5/s would take 200 s per ledger; 200 keep the command under two minutes and
still measure 199 intervals at the steady pace. ``--recipients 1000`` runs the full size.

Usage: ``python benchmarks/campaign_s3.py [--recipients 200] [--rate 5] [--delay 0.05]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE = [sys.executable, "-m", "famulor_provider.testing", "serve"]
BUCKET = "famulor-ledgers"
PUT_PRICE, GET_PRICE = 0.005 / 1000, 0.0004 / 1000  # USD per request, S3 Standard, us-east-1
KINDS = {"PutObject": "PUT", "GetObject": "GET", "ListObjectsV2": "LIST"}


# -- the S3 server process ----------------------------------------------------------------------------


def serve_s3(delay: float, port_file: Path) -> None:
    """In the child: moto's server and the delaying proxy until SIGTERM; the proxy's URL in ``port_file``."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from s3_server import S3Proxy, S3Server

    with S3Server() as s3, S3Proxy(s3.url, delay=delay) as proxy:
        s3.create_bucket(BUCKET)
        port_file.write_text(proxy.url)
        signal.sigwait({signal.SIGTERM})


@contextlib.contextmanager
def process(args: list[str], log: Path, port_file: Path) -> Iterator[str]:
    """A server process stopped by its PID on exit; yields what it wrote to ``port_file``."""
    with log.open("wb") as out:
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{args[1:3]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.1)
        yield port_file.read_text().strip()
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)


# -- one campaign -------------------------------------------------------------------------------------


def sandbox_entries(base: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while True:
        with urllib.request.urlopen(f"{base}/_sandbox/ledger?since={len(entries)}", timeout=30) as answer:
            page = json.load(answer)
        entries.extend(page["data"])
        if not page["data"] or len(entries) >= page["total"]:
            return entries


def count_requests(counter: Counter[str]) -> Any:
    """``s3_client`` that counts every HTTP request its client sends, by operation."""
    from famulor_provider.campaign.stores import s3 as s3_store

    real = s3_store.s3_client

    def counting_client(conn_id: str) -> Any:
        client = real(conn_id)

        def count(operation_name: str, **_: Any) -> None:  # once per HTTP request, retries included
            counter[KINDS.get(operation_name, operation_name)] += 1

        client.meta.events.register("request-created.s3", count)
        return client

    return mock.patch.object(s3_store, "s3_client", counting_client)


def campaign(name: str, ledger_path: str, prefix: int, count: int, rate: float, base: str) -> dict[str, Any]:
    from famulor_provider.exceptions import FamulorError
    from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator

    phones = [f"+1{prefix:03d}{n:07d}" for n in range(count)]
    operator = SendWhatsAppCampaignOperator(
        task_id="campaign",
        sender_id=12,
        template_id=1201,
        recipients=[{"recipient_phone": phone, "variables": {"1": "A"}} for phone in phones],
        ledger_path=ledger_path,
        max_sends_per_second=rate,
        check_messaging_limit=False,
    )
    ti = SimpleNamespace(dag_id="bench_s3", run_id=name, task_id="campaign", map_index=-1, try_number=1)
    requests: Counter[str] = Counter()
    started = time.monotonic()
    with count_requests(requests):
        try:
            summary = operator.execute({"ti": ti})  # type: ignore[arg-type]
        except FamulorError as err:
            raise SystemExit(f"FAIL: the {name} campaign failed: {err}") from err
    wall = time.monotonic() - started
    mine = [e for e in sandbox_entries(base) if e["recipient_phone"] in set(phones)]
    times = sorted(e["accepted_at"] for e in mine)
    billed = Counter(e["recipient_phone"] for e in mine)
    return {
        "name": name,
        "recipients": count,
        "rate": (len(times) - 1) / (times[-1] - times[0]),
        "duplicates": sum(1 for n in billed.values() if n > 1),
        "missing": count - len(billed),
        "answered_429": summary["answered_429"],
        "requests": requests,
        "wall": wall,
    }


def resume_read(ledger_path: str) -> dict[str, Any]:
    """Open the S3 campaign's ledger as its retry would (try 2): the time to read the log."""
    from famulor_provider.campaign.ledger import CampaignLedger

    requests: Counter[str] = Counter()
    with count_requests(requests):
        started = time.monotonic()
        ledger = CampaignLedger.open(
            ledger_path, dag_id="bench_s3", run_id="s3", task_id="campaign", map_index=-1, try_number=2
        )
        seconds = time.monotonic() - started
    ledger.close()
    return {"objects": requests["GET"], "seconds": seconds, "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5.0, help="the API's limit and the campaign's pace")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds added to every S3 request")
    parser.add_argument("--serve-s3", type=Path, help=argparse.SUPPRESS)  # the child's port file
    args = parser.parse_args()
    if args.serve_s3:
        serve_s3(args.delay, args.serve_s3)
        return

    work = Path(tempfile.mkdtemp(prefix="famulor-bench-s3-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    os.environ["AIRFLOW_HOME"] = str(work / "airflow")
    sandbox_args = [*SERVE, "--send-rate-limit", f"{args.rate:g}", "--port-file", str(work / "sandbox.port")]
    s3_args = [sys.executable, __file__, "--delay", str(args.delay), "--serve-s3", str(work / "s3.url")]
    with (
        process(sandbox_args, work / "sandbox.log", work / "sandbox.port") as port,
        process(s3_args, work / "s3.log", work / "s3.url") as proxy_url,
    ):
        from famulor_provider.testing.sandbox import SANDBOX_API_KEY

        base = f"http://127.0.0.1:{port}"
        famulor = {"conn_type": "famulor", "host": f"{base}/api", "password": SANDBOX_API_KEY}
        aws = {
            "conn_type": "aws",
            "login": "bench",
            "password": "bench-secret",
            "extra": {"endpoint_url": proxy_url, "region_name": "us-east-1"},
        }
        os.environ["AIRFLOW_CONN_FAMULOR_DEFAULT"] = json.dumps(famulor)
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(aws)
        logging.getLogger().setLevel(logging.WARNING)
        print(
            f"{args.recipients} recipients per ledger at {args.rate:g}/s (the sandbox's limit and the "
            f"campaign's pace); S3: moto behind a proxy adding {args.delay * 1000:.0f} ms per request"
        )
        posix = campaign("posix", str(work / "ledgers"), 201, args.recipients, args.rate, base)
        s3 = campaign("s3", f"s3://{BUCKET}/ledgers", 202, args.recipients, args.rate, base)
        resume = resume_read(f"s3://{BUCKET}/ledgers")

    head = (
        f"{'ledger':<8} {'sends/s':>8} {'of limit':>9} {'429':>4} {'dupl.':>6} {'missing':>8} {'wall s':>7}"
    )
    print(f"\n{head}  S3 requests per recipient")
    for figures in (posix, s3):
        requests, n = figures["requests"], figures["recipients"]
        per = ", ".join(
            f"{kind} {requests[kind] / n:.3f}" for kind in ("PUT", "GET", "LIST") if requests[kind]
        )
        total = sum(requests.values()) / n
        print(
            f"{figures['name']:<8} {figures['rate']:>8.2f} {figures['rate'] / args.rate:>8.1%} "
            f"{figures['answered_429']:>4} {figures['duplicates']:>6} {figures['missing']:>8} "
            f"{figures['wall']:>7.1f}  {f'{total:.3f} ({per})' if total else '-'}"
        )
    requests, n = s3["requests"], s3["recipients"]
    price = ((requests["PUT"] + requests["LIST"]) * PUT_PRICE + requests["GET"] * GET_PRICE) / n * 100_000
    print(
        f"\nS3 / POSIX sends/s: {s3['rate'] / posix['rate']:.3f}; S3 requests per 100,000 recipients: "
        f"{sum(requests.values()) / n * 100_000:,.0f}, USD {price:.2f} at S3 Standard request prices"
    )
    print(
        f"A retry of the S3 campaign read its {resume['objects']} objects in {resume['seconds']:.2f} s "
        f"({resume['objects'] / resume['seconds']:.0f} objects/s; {resume['requests']['GET']} GET, "
        f"{resume['requests']['LIST']} LIST, {resume['requests']['PUT']} PUT)"
    )
    if any(f["duplicates"] or f["missing"] for f in (posix, s3)):
        sys.exit("FAIL: a recipient was billed twice or not at all")


if __name__ == "__main__":
    main()
