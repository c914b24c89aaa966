"""
System test: delivery receipts of a campaign of 200, end to end on a real deployment (Airflow 3.1+).

The api-server (with the provider's receiver plugin), scheduler, dag-processor and triggerer run
on 127.0.0.1 (``deployment.py``); the sandbox is the Famulor API and posts each message's signed
receipts (``sent``, then ``delivered``, ``read``; ``failed``/``undelivered``/only ``sent`` for
chosen numbers; delays x0.2) to ``/famulor/webhooks/famulor_default/message-status``. The DAG
``famulor_delivery_system`` sends the campaign, waits for the receipts with
``WhatsAppDeliverySensor`` (5 customers are never delivered: it times out and is skipped), reports,
and falls back with another template to the failed and undelivered ones. Checked: the report's
counts equal what the sandbox delivered, its file lists exactly the failed customers, and the
fallback campaign sent to them and nobody else, once each. About 2 minutes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deployment import AIRFLOW_VERSION, SYSTEM_TEST, AirflowDeployment, deployed

pytestmark = [
    SYSTEM_TEST,
    pytest.mark.skipif(
        tuple(int(p) for p in AIRFLOW_VERSION.split(".")[:2]) < (3, 1),
        reason="delivery receipts need Airflow 3.1+ (a FastAPI plugin in the api-server)",
    ),
]

DAG_FILE = Path(__file__).resolve().parent / "dags" / "famulor_delivery_system.py"
DAG_ID = "famulor_delivery_system"
SECRET = "system-test-signing-secret-" + "x" * 16
PHONES = [f"+1415{5570000 + i:07d}" for i in range(200)]
PLAN = {  # what the sandbox makes of each message; the rest are read
    **{phone: "failed:131049" for phone in PHONES[:10]},
    **{phone: "undelivered:63016" for phone in PHONES[10:15]},
    **{phone: "sent" for phone in PHONES[15:20]},
    **{phone: "delivered" for phone in PHONES[20:30]},
}
FAILED = set(PHONES[:15])
WELCOME = 12 * 100 + 2  # the sandbox's "welcome" (en) template of sender 12


@pytest.fixture
def deployment(tmp_path: Path, famulor_sandbox: Any) -> Iterator[AirflowDeployment]:
    conn = json.loads(famulor_sandbox.connection_json())
    conn["extra"] = {**conn.get("extra", {}), "webhook_signing_secrets": {"12": SECRET}}
    env = {"AIRFLOW_CONN_FAMULOR_DEFAULT": json.dumps(conn)}
    with deployed(tmp_path, DAG_FILE, env, triggerer=False) as airflow:
        rows = [
            "recipient_phone,recipient_name,1",
            *(f"{p},Customer {i},A-{i}" for i, p in enumerate(PHONES)),
        ]
        (airflow.shared / "recipients.csv").write_text("\n".join(rows) + "\n")
        famulor_sandbox.webhook_time_scale = 0.2
        url = f"http://127.0.0.1:{airflow.api_port}/famulor/webhooks/famulor_default/message-status"
        famulor_sandbox.set_status_webhook(12, url, SECRET)
        for phone, outcome in PLAN.items():
            famulor_sandbox.set_recipient_outcome(phone, outcome)
        yield airflow


def delivered_statuses(sandbox: Any) -> dict[str, str]:
    """``{phone: last status}`` of the receipts the receiver accepted (2xx), per message."""
    rank = {"sent": 1, "delivered": 2, "read": 3, "failed": 4, "undelivered": 4}
    phone_of = {row["whatsapp_message_id"]: row["recipient_phone"] for row in sandbox.ledger}
    last: dict[str, str] = {}
    for delivery in sandbox.webhook_deliveries:
        if delivery["kind"] != "message_status" or delivery["state"] != "delivered":
            continue
        message_id, status = delivery["key"].split(":")
        phone = phone_of[int(message_id)]
        if rank[status] >= rank.get(last.get(phone, ""), 0):
            last[phone] = status
    return last


@pytest.mark.famulor_sandbox(send_rate_limit=None)
def test_a_campaign_of_200_is_reported_from_its_receipts_and_falls_back_on_the_failed_ones(
    deployment: AirflowDeployment, famulor_sandbox: Any
) -> None:
    deployment.wait_for_dag(DAG_ID)
    deployment.wait_until_ready()
    deployment.cli("dags", "trigger", DAG_ID)
    states = deployment.wait_for_success(DAG_ID)

    # On failure: what became of the receipts (a 404 on 3.1: see the README's "Airflow lines").
    deliveries = Counter(
        (d["kind"], d["state"], d["attempts"][-1]["http_status"] if d["attempts"] else None)
        for d in famulor_sandbox.webhook_deliveries
    )
    assert {k: v[0] for k, v in states.items()} == {
        "campaign": "success",
        "wait": "skipped",  # 5 customers never got past "sent": soft_fail after 30 s
        "report": "success",
        "anyone_to_fall_back_on": "success",
        "fallback": "success",
    }, (
        deliveries,
        deployment.query("SELECT task_id, value FROM xcom WHERE task_id = 'report'"),
        deployment.logs(),
    )
    first = [row for row in famulor_sandbox.ledger if row["template_id"] != WELCOME]
    assert Counter(row["recipient_phone"] for row in first) == dict.fromkeys(PHONES, 1)

    # What the sandbox delivered to the receiver is what the report counts.
    famulor_sandbox.wait_for_webhooks(30)
    delivered = {p: s for p, s in delivered_statuses(famulor_sandbox).items() if p in set(PHONES)}
    report = deployment.return_value(DAG_ID, "report")
    expected = Counter(delivered.values())
    assert report["statuses"] == {
        "sent": expected["sent"],
        "delivered": expected["delivered"],
        "read": expected["read"],
        "failed": expected["failed"],
        "undelivered": expected["undelivered"],
        "no_receipt": 200 - len(delivered),
    }
    assert report["statuses"] == {
        "sent": 5, "delivered": 10, "read": 170, "failed": 10, "undelivered": 5, "no_receipt": 0
    }  # fmt: skip
    assert report["error_codes"] == {"131049": 10, "63016": 5}
    assert report["fallback"] == 15
    # Every receipt is an asset event (at least once: a retried delivery may add one).
    [(events,)] = deployment.query(
        "SELECT COUNT(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?",
        "famulor.famulor_default.message_status",
    )
    accepted = [
        d
        for d in famulor_sandbox.webhook_deliveries
        if d["kind"] == "message_status" and d["state"] == "delivered"
    ]
    assert events >= len(accepted) > 200

    # The fallback went to the failed and undelivered customers only, once each, with their variables.
    fallback = [row for row in famulor_sandbox.ledger if row["template_id"] == WELCOME]
    assert Counter(row["recipient_phone"] for row in fallback) == dict.fromkeys(FAILED, 1)
    assert {row["recipient_name"] for row in fallback} == {f"Customer {i}" for i in range(15)}
