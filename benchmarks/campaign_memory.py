"""Memory and time of a 100,000-recipient campaign's building blocks: the plan and the ledger.

Measures, on a generated JSON Lines file:

- ``plan_recipients``: the check-and-deduplicate pass, then the sending pass over the file;
- ``CampaignLedger``: the cost of one recipient's durable records (attempt + outcome, each
  fsynced) on the ledger folder's file system, and resuming a ledger that holds every recipient;
- ``read_campaign_ledger``: the report reader on that ledger;
- the recipients given as text: the JSON text of the list, and its Python text (what
  ``{{ ti.xcom_pull(...) }}`` renders without ``render_template_as_native_obj``), against
  ``ast.literal_eval`` of the same Python text (the baseline: how Python text was read before).

Memory is Python's allocations (tracemalloc: retained after the step, and the step's peak); time
is measured in separate runs without tracemalloc, which slows Python down.

Run: ``python benchmarks/campaign_memory.py [--recipients 100000] [--folder /mnt/shared]``
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

MB = 2**20
IDENTITY = {
    "dag_id": "bench",
    "run_id": "manual__2025-01-31T09:00:00+00:00",
    "task_id": "send",
    "map_index": -1,
}


def measure(step: Callable[[], Any]) -> tuple[Any, str, float, float]:
    """The step's result, its CPU and wall time (untraced run), retained and peak MB (traced run)."""
    started, cpu = time.perf_counter(), time.process_time()
    step()
    timing = f"{time.process_time() - cpu:.2f} s CPU ({time.perf_counter() - started:.2f} s wall)"
    tracemalloc.start()
    try:
        result = step()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, timing, retained / MB, peak / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--fsync-sample", type=int, default=500, help="recipients written with fsync")
    parser.add_argument("--folder", help="where to put the files (default: a temporary folder)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="famulor-campaign-bench-", dir=args.folder)
    os.environ.setdefault("AIRFLOW_HOME", os.path.join(work, "airflow-home"))

    from famulor_provider.campaign.ledger import CampaignLedger, ledger_file_path, read_campaign_ledger
    from famulor_provider.campaign.recipients import plan_recipients

    count = args.recipients
    try:
        source = os.path.join(work, "recipients.jsonl")
        with open(source, "w") as file:
            for n in range(count):
                row = {"recipient_phone": f"+1415{n:07d}", "recipient_name": f"Customer {n}"}
                row["variables"] = {"1": f"order {n}", "2": "2025-02-01"}
                file.write(json.dumps(row) + "\n")
        print(f"{count:,} recipients, {os.path.getsize(source) / MB:.1f} MB of JSON Lines in {work}")
        plan_recipients(source)  # Airflow's object storage imports outside the measurements

        plan, timing, retained, peak = measure(lambda: plan_recipients(source))
        print(f"plan (check + dedupe): {timing}, retained {retained:.2f} MB, peak {peak:.2f} MB")
        _, timing, retained, peak = measure(lambda: sum(1 for _ in plan))
        print(f"sending pass over the file: {timing}, peak {peak:.2f} MB")

        ledger_folder = os.path.join(work, "ledgers")
        sample = min(args.fsync_sample, count)
        with CampaignLedger.open(
            ledger_folder, **IDENTITY, try_number=1, sender_id=1, template_id=1
        ) as ledger:
            cpu, wall = time.process_time(), time.perf_counter()
            for n in range(sample):
                phone = f"+1415{n:07d}"
                ledger.record_attempt(phone)
                ledger.record_outcome(phone, "sent", message_id=f"msg-{n}", status="queued")
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(
            f"ledger writes (attempt + outcome, 2 fsyncs) over {sample} recipients: "
            f"{wall / sample * 1000:.2f} ms wall, {cpu / sample * 1000:.3f} ms CPU per recipient"
        )

        # The rest of a full ledger, written without fsync (the format is what matters here).
        path = ledger_file_path(ledger_folder, **IDENTITY)
        at = '"at":"2025-01-31T09:00:00.000+00:00"'
        with open(path, "a") as file:
            for n in range(sample, count):
                phone = f"+1415{n:07d}"
                file.write(f'{{"type":"attempt","recipient_phone":"{phone}",{at}}}\n')
                file.write(
                    f'{{"type":"outcome","recipient_phone":"{phone}","outcome":"sent",'
                    f'"message_id":"msg-{n}","status":"queued",{at}}}\n'
                )
        print(f"ledger with {count:,} recipients: {os.path.getsize(path) / MB:.1f} MB")

        def resume() -> CampaignLedger:
            ledger = CampaignLedger.open(ledger_folder, **IDENTITY, try_number=2, sender_id=1, template_id=1)
            ledger.close()
            return ledger

        resumed, timing, retained, peak = measure(resume)
        assert resumed.counts()["sent"] == count
        print(f"resume (read the ledger): {timing}, retained {retained:.2f} MB, peak {peak:.2f} MB")

        def read_all() -> int:
            return sum(1 for _ in read_campaign_ledger(path))

        total, timing, retained, peak = measure(read_all)
        assert total == count
        print(f"read_campaign_ledger (iterated to the end): {timing}, peak {peak:.2f} MB")
        rows = []
        with open(source) as file:
            rows = [json.loads(line) for line in file]
        as_json, as_python = json.dumps(rows), str(rows)
        del rows
        print(f"the list as text: {len(as_json) / MB:.1f} MB of JSON, {len(as_python) / MB:.1f} MB of Python")
        peaks = {}
        for name, step in (
            ("JSON text", lambda: plan_recipients(as_json)),
            ("Python text", lambda: plan_recipients(as_python)),
            ("ast.literal_eval of the Python text (baseline)", lambda: ast.literal_eval(as_python)),
        ):
            _, timing, retained, peak = measure(step)
            peaks[name] = peak
            print(f"recipients as {name}: {timing}, peak {peak:.0f} MB")
        baseline = peaks["ast.literal_eval of the Python text (baseline)"]
        print(
            f"Python text peak: {peaks['Python text'] / peaks['JSON text']:.2f}x the JSON text's, "
            f"{peaks['Python text'] / baseline:.2f}x ast.literal_eval's"
        )
        print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
