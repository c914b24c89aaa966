"""Benchmark: what reading delivery receipts costs a campaign's delivery report (Airflow 3.1+).

A temporary ``AIRFLOW_HOME`` (SQLite, a copy of the tests' migrated DB when there is one) holds
``--recipients`` sent recipients in a campaign ledger and three receipts each (``sent``,
``delivered``, ``read``) as events of ``famulor.famulor_default.message_status``, committed as the
receiver commits them. One DAG run (``dag.test()``, the real task runner and its in-process
execution API) runs ``WhatsAppDeliveryReportOperator`` twice over the same ledger:

- ``baseline``: on a connection whose asset has no events (reads the ledger, writes the file);
- ``report``: on ``famulor_default``, reading every receipt through the Task SDK in pages of 1,000.

Printed: each task's duration, the ratio, and the receipts read per second. Bounded: about a
minute with the defaults (most of it writing the events).

Usage: ``python benchmarks/delivery_report.py [--recipients 10000]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

DAG_FILE = """
import os
from datetime import datetime, timezone
from airflow.sdk import DAG
from famulor_provider.operators.delivery import WhatsAppDeliveryReportOperator

HOME = os.environ["AIRFLOW_HOME"]
with DAG(dag_id="delivery_report_benchmark", schedule=None,
         start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False):
    base = WhatsAppDeliveryReportOperator(task_id="baseline", famulor_conn_id="famulor_empty",
        campaign=HOME + "/ledger.jsonl", output_path=HOME + "/baseline.jsonl")
    full = WhatsAppDeliveryReportOperator(task_id="report", campaign=HOME + "/ledger.jsonl",
        output_path=HOME + "/report.jsonl")
    base >> full
"""


def write_ledger(path: Path, recipients: int) -> None:
    now = datetime.now(timezone.utc).isoformat()
    with path.open("w") as file:
        file.write(
            json.dumps({"type": "campaign", "format": 1, "dag_id": "d", "run_id": "r", "task_id": "t"}) + "\n"
        )
        for n in range(recipients):
            phone = f"+49151{n:08d}"
            file.write(json.dumps({"type": "attempt", "recipient_phone": phone, "at": now}) + "\n")
            outcome = {"type": "outcome", "recipient_phone": phone, "outcome": "sent", "message_id": 7000 + n}
            file.write(json.dumps({**outcome, "status": "queued", "at": now}) + "\n")


def record_receipts(recipients: int) -> int:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    name = "famulor.famulor_default.message_status"
    count = 0
    with create_session() as session:
        asset = AssetModel(name=name, uri=name, group="asset")
        session.add(asset)
        session.add(
            AssetModel(
                name="famulor.famulor_empty.message_status",
                uri="famulor.famulor_empty.message_status",
                group="asset",
            )
        )
        session.flush()
        for status in ("sent", "delivered", "read"):
            for n in range(recipients):
                payload = {
                    "event": "message_status",
                    "whatsapp_message_id": 7000 + n,
                    "message_sid": f"SM{n:032x}",
                    "meta_message_id": f"wamid.BENCH{n:012d}",
                    "conversation_id": None,
                    "assistant_id": None,
                    "sender": {"id": 12, "phone_number": "+14155551234", "display_name": "Acme Corp Support"},
                    "to": f"+49151{n:08d}",
                    "from": "+14155551234",
                    "direction": "outbound",
                    "status": status,
                    "error_code": None,
                    "error_message": None,
                    "error_description": None,
                    "timestamp": "2026-12-07T12:00:00Z",
                    "provider_timestamp": "2026-12-07T12:00:00Z",
                }
                extra = {"payload": payload, "dedupe_key": f"{7000 + n}:{status}"}
                session.add(AssetEvent(asset_id=asset.id, extra=extra))
                count += 1
            session.flush()
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    args = parser.parse_args()

    import importlib.metadata

    version = importlib.metadata.version("apache-airflow")
    home = Path(tempfile.mkdtemp(prefix="famulor-delivery-bench-"))
    try:
        (home / "dags").mkdir()
        (home / "dags" / "delivery_report_benchmark.py").write_text(DAG_FILE)
        os.environ.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
                "AIRFLOW_CONN_FAMULOR_DEFAULT": json.dumps({"conn_type": "famulor", "password": "k"}),
                "AIRFLOW_CONN_FAMULOR_EMPTY": json.dumps({"conn_type": "famulor", "password": "k"}),
            }
        )
        cached = REPO_ROOT / ".airflow" / "test-db" / f"airflow-{version}.db"
        if cached.exists():
            shutil.copyfile(cached, home / "airflow.db")
        else:
            subprocess.run(
                [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                check=True,
                capture_output=True,
            )
        write_ledger(home / "ledger.jsonl", args.recipients)
        started = time.monotonic()
        events = record_receipts(args.recipients)
        print(
            f"Airflow {version}: {args.recipients} sent recipients, {events} receipts recorded "
            f"in {time.monotonic() - started:.1f} s"
        )

        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from airflow_harness import run_dag

        result = run_dag(
            home / "dags" / "delivery_report_benchmark.py", "delivery_report_benchmark", timeout=600
        )
        assert result.states == {"baseline": "success", "report": "success"}, result.states
        report = result.xcom("report")
        assert report["statuses"]["read"] == args.recipients, report["statuses"]
        assert result.xcom("baseline")["statuses"]["no_receipt"] == args.recipients

        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            durations = {
                ti.task_id: (ti.end_date - ti.start_date).total_seconds()
                for ti in session.query(TaskInstance).filter(
                    TaskInstance.dag_id == "delivery_report_benchmark"
                )
            }
        base, full = durations["baseline"], durations["report"]
        print(f"baseline (ledger, no receipts): {base:.2f} s")
        print(f"report ({events} receipts read): {full:.2f} s  = {full / base:.1f}x the baseline")
        print(
            f"receipts read per second: {events / max(full - base, 1e-9):,.0f} "
            f"({(full - base) / events * 1e6:.0f} us per receipt beyond the baseline)"
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
