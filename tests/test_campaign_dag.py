"""End to end: the famulor_whatsapp_campaign example DAG through dag.test() against the sandbox.

One campaign task sends to every recipient once at the API's limit; the report reads the ledger.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from famulor_provider.campaign.ledger import ledger_file_path, read_campaign_ledger
from famulor_provider.testing import FamulorSandbox

DAG_FILE = "example_dags/famulor_whatsapp_campaign.py"
DAG_ID = "famulor_whatsapp_campaign"
DEFAULT_PHONES = {"+14155550101", "+14155550102", "+442079460103"}


@pytest.fixture
def sandbox() -> Iterator[FamulorSandbox]:
    with FamulorSandbox() as sb:  # the API's 5 sends/s limit, on
        yield sb


def test_campaign_with_default_params(run_dag: Callable[..., Any], sandbox: FamulorSandbox) -> None:
    result = run_dag(DAG_FILE, DAG_ID, env=sandbox.env())

    assert result.state == "success", result.states
    assert result.xcom("pick_sender") == 15
    assert Counter(row["recipient_phone"] for row in sandbox.ledger) == dict.fromkeys(DEFAULT_PHONES, 1)
    assert {row["template_id"] for row in sandbox.ledger} == {1501}  # order_update of sender 15
    summary = result.xcom("send_campaign")
    assert (summary["recipients"], summary["sent"], summary["unknown"], summary["failed"]) == (3, 3, 0, 0)
    assert summary["rows"] == 3  # the example's CSV file, the default of params.recipients
    report = result.xcom("report")
    assert report == {
        "recipients": 3,
        "sent": 3,
        "refused": 0,
        "rejected": 0,
        "unknown": 0,
        "attempts": 3,
        "ledger": summary["ledger"],
    }
    assert [r.status for r in sandbox.requests if r.method == "POST"] == [200] * 3


def test_campaign_reports_a_lost_answer(run_dag: Callable[..., Any], sandbox: FamulorSandbox) -> None:
    lost = "+14155550102"
    recipients = [
        {"recipient_phone": phone, "variables": {"1": f"A-{n}"}}
        for n, phone in enumerate(sorted(DEFAULT_PHONES))
    ]
    recipients.append({"recipient_phone": "+1 415 555 0101", "variables": {"1": "again"}})
    sandbox.inject("lost_response", recipient_phone=lost)

    result = run_dag(
        DAG_FILE,
        DAG_ID,
        conf={"template_name": "order_update", "language": "en", "recipients": recipients},
        env=sandbox.env(),
    )

    # Failed without retry (retries=2): the lost one may have been sent, and was, once.
    campaign = result.ti("send_campaign")
    assert (campaign.state, campaign.try_number) == ("failed", 1)
    assert Counter(row["recipient_phone"] for row in sandbox.ledger) == dict.fromkeys(DEFAULT_PHONES, 1)
    # The report ran anyway, read the ledger and failed the run naming the counts.
    report = result.ti("report")
    assert report.state == "failed"
    assert result.state == "failed"
    ledger = ledger_file_path(
        None, dag_id=DAG_ID, run_id=result.run_id, task_id="send_campaign", map_index=-1
    )  # the default folder, under AIRFLOW_HOME
    outcomes = {r["recipient_phone"]: r["outcome"] for r in read_campaign_ledger(ledger)}
    assert outcomes == {**dict.fromkeys(DEFAULT_PHONES, "sent"), lost: "unknown"}
