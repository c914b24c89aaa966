"""Benchmark: a 500-recipient campaign through the famulor_whatsapp_campaign DAG (the local sandbox).

Runs the example DAG with ``dag.test()`` (one process, one mapped send task per recipient, as
in ``tests/test_campaign_dag.py``) against ``FamulorSandbox(send_rate_limit=5)`` over real HTTP
on 127.0.0.1, and prints:

- sends per second as the API saw them (the ledger's ``accepted_at``; 5/s is the ceiling),
- the smallest gap between two accepted sends and how many 429s the API answered,
- duplicates (recipients messaged more than once: must be 0) and recipients not messaged,
- the send tasks' final states and try numbers.

``--faults`` also injects, on a few recipients each, a lost answer (accepted, then the connection
drops), a 429 and a sender offline once: duplicates must still be 0.

Usage: ``python benchmarks/campaign_sends.py [--recipients 500] [--faults]`` (about 2 minutes for
500). Not a timed test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = REPO_ROOT / "example_dags" / "famulor_whatsapp_campaign.py"


def _airflow_home() -> Path:
    """A throwaway AIRFLOW_HOME, set before Airflow is imported (seeded from the tests' DB cache)."""
    home = Path(tempfile.mkdtemp(prefix="famulor-bench-"))
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
            "AIRFLOW__CORE__MAX_MAP_LENGTH": "5000",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
    )
    return home


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=500)
    parser.add_argument("--faults", action="store_true", help="inject lost answers, 429s, offline senders")
    args = parser.parse_args()

    home = _airflow_home()
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        import importlib.metadata

        import airflow_harness

        from famulor_provider.testing import FamulorSandbox

        cache = (
            REPO_ROOT / ".airflow" / "test-db" / f"airflow-{importlib.metadata.version('apache-airflow')}.db"
        )
        if cache.exists():
            shutil.copyfile(cache, home / "airflow.db")
        else:
            airflow_harness.migrate_db(cache=cache)
        airflow_harness.speed_up_in_process_runs()
        logging.getLogger().setLevel(logging.WARNING)

        phones = [f"+1415{5550000 + i:07d}" for i in range(args.recipients)]
        recipients = [{"recipient_phone": p, "variables": {"1": f"A-{i}"}} for i, p in enumerate(phones)]
        lost: set[str] = set()
        with FamulorSandbox(send_rate_limit=5) as sandbox:
            if args.faults:
                for i, phone in enumerate(phones[::25]):  # 4 % of recipients, a fault each
                    kind = ("accept_then_drop", "status", "sender_offline")[i % 3]
                    extra = {"status": 429, "retry_after": 1} if kind == "status" else {}
                    sandbox.inject(kind, recipient_phone=phone, **extra)
                    if kind == "accept_then_drop":
                        lost.add(phone)
            started = time.monotonic()
            result = airflow_harness.run_dag(
                DAG_FILE,
                "famulor_whatsapp_campaign",
                conf={"template_name": "order_update", "language": "en", "recipients": recipients},
                env=sandbox.env(),
            )
            wall = time.monotonic() - started
            ledger = sandbox.ledger
            answered_429 = sum(1 for r in sandbox.requests if r.status == 429)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    counts = Counter(row["recipient_phone"] for row in ledger)
    times = sorted(row["accepted_at"] for row in ledger)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    sends = result.mapped("send_template")
    states = Counter(f"{ti.state} (try {ti.try_number})" for ti in sends)
    duplicates = sum(1 for n in counts.values() if n > 1)

    print(f"Airflow {airflow_harness.airflow_version()}, {args.recipients} recipients, faults: {args.faults}")
    per_task_ms = wall / max(len(sends), 1) * 1000
    rate = (len(times) - 1) / span if span else 0.0
    print(f"  run: {result.state} in {wall:.1f} s wall ({per_task_ms:.0f} ms per send task)")
    print(f"  accepted sends: {len(ledger)} in {span:.1f} s = {rate:.2f} sends/s")
    print(f"  smallest gap between accepted sends: {min(gaps) * 1000 if gaps else 0:.0f} ms (0.2 s = 5/s)")
    print(f"  429 answers: {answered_429}")
    print(f"  duplicates: {duplicates} (must be 0)")
    print(f"  recipients not messaged: {len(set(phones) - set(counts))}; lost answers injected: {len(lost)}")
    print(f"  send tasks: {dict(sorted(states.items()))}")
    if duplicates:
        sys.exit("FAIL: a recipient was messaged more than once")


if __name__ == "__main__":
    main()
