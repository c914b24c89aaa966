"""``WhatsAppDeliverySensor`` and ``WhatsAppDeliveryReportOperator`` end to end with ``dag.test()``:
real sends to the sandbox, the receipts committed as asset events in the real metadata DB (as the
receiver commits them) while the DAG runs, read back by the real task runner."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_harness import airflow_version
from delivery_receipts import receipt, record

pytestmark = pytest.mark.skipif(
    airflow_version().startswith("2."), reason="delivery receipts need Airflow 3.1+ (a FastAPI plugin)"
)

DAGS = Path(__file__).parent / "dags" / "famulor_delivery_cases.py"
PHONE = "+4915112345623"


@pytest.fixture(autouse=True)
def no_receipts_yet() -> None:
    """Each test starts without receipts: the sandbox of every test numbers its messages alike."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete, select

    with create_session() as session:
        assets = select(AssetModel.id).where(AssetModel.name == "famulor.famulor_default.message_status")
        session.execute(delete(AssetEvent).where(AssetEvent.asset_id.in_(assets)))


@pytest.fixture
def in_background() -> Iterator[Callable[[Callable[[], None]], None]]:
    """Run a function in a thread while the DAG runs; its failure fails the test."""
    threads: list[tuple[threading.Thread, list[BaseException]]] = []

    def start(fn: Callable[[], None]) -> None:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as err:  # reported by the fixture
                errors.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append((thread, errors))

    yield start
    for thread, errors in threads:
        thread.join(30)
        assert not errors, errors


def wait_for(check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def send_xcoms(dag_id: str = "delivery_after_send") -> dict[str, Any]:
    """``{run_id: the send's result}`` of every run of ``dag_id`` so far."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel.run_id, XComModel.value).filter(
            XComModel.dag_id == dag_id, XComModel.task_id == "send", XComModel.key == "return_value"
        )
        return {run_id: value if isinstance(value, dict) else json.loads(value) for run_id, value in rows}


def sent_message_id(before: dict[str, Any], dag_id: str = "delivery_after_send") -> Any:
    """The whatsapp_message_id of the send that ran after ``before`` was taken (read from its XCom)."""
    new = wait_for(lambda: {k: v for k, v in send_xcoms(dag_id).items() if k not in before})
    [value] = new.values()
    return value["whatsapp_message_id"]


def test_the_sensor_waits_in_reschedule_mode_until_delivered(
    run_dag: Any, famulor_sandbox: Any, in_background: Any
) -> None:
    before = send_xcoms()

    def receipts() -> None:
        message_id = sent_message_id(before)
        record([receipt(message_id, "sent", PHONE)])
        time.sleep(1.5)  # a poke or two sees only "sent"
        record([receipt(message_id, "delivered", PHONE), receipt(message_id, "delivered", PHONE)])

    in_background(receipts)
    result = run_dag(DAGS, "delivery_after_send")

    assert result.states == {"send": "success", "wait": "success"}
    message_id = result.xcom("send")["whatsapp_message_id"]
    out = result.xcom("wait")
    assert out["until"] == "delivered"
    assert out["messages"] == 1
    assert out["counts"] == {
        "sent": 0,
        "delivered": 1,
        "read": 0,
        "failed": 0,
        "undelivered": 0,
        "no_receipt": 0,
    }
    [row] = out["receipts"]
    assert row["whatsapp_message_id"] == message_id
    assert row["recipient"] == "+49151****23"  # masked: no full number in XCom
    assert row["status"] == "delivered"
    assert PHONE not in json.dumps(out)


def test_read_is_awaited_past_delivered(run_dag: Any, famulor_sandbox: Any, in_background: Any) -> None:
    before = send_xcoms("delivery_after_send_read")

    def receipts() -> None:
        message_id = sent_message_id(before, "delivery_after_send_read")
        record([receipt(message_id, "sent"), receipt(message_id, "delivered")])
        time.sleep(1.5)
        record([receipt(message_id, "read")])

    in_background(receipts)
    started = time.monotonic()
    result = run_dag(DAGS, "delivery_after_send_read")

    assert result.states == {"send": "success", "wait": "success"}
    assert time.monotonic() - started >= 1.5  # "delivered" did not end it
    assert result.xcom("wait")["counts"]["read"] == 1


def test_a_failed_receipt_ends_the_sensor_at_once_with_the_provider_error(
    run_dag: Any, famulor_sandbox: Any, in_background: Any, tmp_path: Path
) -> None:
    failure = tmp_path / "failure.json"

    before = send_xcoms()

    def receipts() -> None:
        message_id = sent_message_id(before)
        record([receipt(message_id, "sent"), receipt(message_id, "undelivered", error_code=63016)])

    in_background(receipts)
    started = time.monotonic()
    result = run_dag(DAGS, "delivery_after_send", env={"FAMULOR_FAILURE_FILE": str(failure)})

    assert result.ti("wait").state == "failed"
    assert result.ti("wait").try_number == 1  # retries=2, but a receipt is final: no retry
    assert time.monotonic() - started < 30  # not the 60 s timeout
    error = json.loads(failure.read_text())
    assert error["type"] == "FamulorDeliveryFailedError"
    assert (error["status"], error["error_code"]) == ("undelivered", 63016)
    assert error["error_description"].startswith("Message failed to send because more than 24 hours")
    assert error["recipient"] == "+49151****23"
    assert "error 63016" in error["message"] and PHONE not in error["message"]


def test_a_mapped_sends_results_are_awaited_together(
    run_dag: Any, famulor_sandbox: Any, in_background: Any
) -> None:
    def receipts() -> None:
        rows = wait_for(lambda: len(famulor_sandbox.ledger) == 3 and famulor_sandbox.ledger)
        record([receipt(row["whatsapp_message_id"], "delivered", row["recipient_phone"]) for row in rows[:2]])
        time.sleep(1.5)  # two of three: still waiting
        record([receipt(rows[2]["whatsapp_message_id"], "read", rows[2]["recipient_phone"])])

    in_background(receipts)
    started = time.monotonic()
    result = run_dag(DAGS, "delivery_after_mapped_sends")

    assert result.ti("wait").state == "success"
    assert time.monotonic() - started >= 1.5
    out = result.xcom("wait")
    assert out["messages"] == 3
    assert (out["counts"]["delivered"], out["counts"]["read"]) == (2, 1)
    assert sorted(row["recipient"] for row in out["receipts"]) == [
        "+49151****23",
        "+49151****24",
        "+49151****25",
    ]


def test_a_timeout_fails_and_soft_fail_skips(run_dag: Any) -> None:
    record([receipt(7001, "sent")])  # only "sent": never delivered

    assert run_dag(DAGS, "delivery_timeout").states == {"sent": "success", "wait": "failed"}
    assert run_dag(DAGS, "delivery_soft_timeout").states == {"sent": "success", "wait": "skipped"}


@pytest.mark.famulor_sandbox(send_rate_limit=None)
def test_a_campaign_is_awaited_and_reported_with_duplicates_ignored(
    run_dag: Any, famulor_sandbox: Any, in_background: Any, tmp_path: Path
) -> None:
    from famulor_provider.campaign.ledger import read_campaign_ledger

    report_path = tmp_path / "reports" / "fallback.jsonl"
    ledgers = tmp_path / "ledgers"
    plan = {0: "read", 1: "delivered", 2: "failed", 3: "undelivered", 4: "sent", 5: None}

    def receipts() -> None:
        def sent() -> list[dict[str, Any]]:
            files = list(ledgers.rglob("*.jsonl"))
            records = list(read_campaign_ledger(files[0])) if files else []
            return records if sum(r["outcome"] == "sent" for r in records) == 6 else []

        records = {r["recipient_phone"]: r for r in wait_for(sent)}
        for i, final in plan.items():
            message_id = records[f"+49151000000{i:02d}"]["message_id"]
            if final is None:
                continue
            statuses = {
                "read": ["sent", "delivered", "read"],
                "delivered": ["sent", "delivered"],
                "sent": ["sent"],
            }.get(final, ["sent", final])
            for status in statuses:
                code = 63016 if status in ("failed", "undelivered") else None
                # every receipt twice: Famulor's retries and the receiver's at-least-once
                record([receipt(message_id, status, error_code=code)] * 2)
        time.sleep(1.5)
        # No receipt for 5 and only "sent" for 4: the sensor waits on them until they fail.
        record([receipt(records["+4915100000004"]["message_id"], "failed", error_code=131049)])
        record([receipt(records["+4915100000005"]["message_id"], "undelivered", error_code=63016)])

    in_background(receipts)
    result = run_dag(
        DAGS,
        "delivery_campaign",
        conf={"ledger_path": str(ledgers), "report_path": str(report_path)},
    )

    assert result.states == {"campaign": "success", "wait": "success", "report": "success"}
    counts = result.xcom("wait")["counts"]
    assert counts == {"sent": 0, "delivered": 1, "read": 1, "failed": 2, "undelivered": 2, "no_receipt": 0}
    report = result.xcom("report")
    assert report["recipients"] == 6
    assert report["statuses"] == counts
    assert report["not_sent"] == {"refused": 0, "rejected": 0, "unknown": 0}
    assert report["error_codes"] == {"63016": 3, "131049": 1}
    assert report["duplicates"] == 10  # each of the first 10 receipts was recorded twice
    assert report["fallback"] == 4 and report["fallback_path"] == str(report_path)
    rows = [json.loads(line) for line in report_path.read_text().splitlines()]
    assert rows == [
        {
            "recipient_phone": f"+49151000000{i:02d}",
            "recipient_name": f"Customer {i}",
            "variables": {"1": f"A-{i}"},
        }
        for i in (2, 3, 4, 5)
    ]
    assert report_path.stat().st_mode & 0o777 == 0o600
    assert {row["recipient"] for row in report["failed"]} == {f"+49151****0{i}" for i in (2, 3, 4, 5)}
