"""
System test: Famulor's webhooks into a real api-server (Airflow 3.1+) with the provider's plugin.

The api-server alone (its plugin mounts ``/famulor``) on 127.0.0.1 with a SQLite DB; the sandbox
sends WhatsApp messages and posts their receipts to it, signed per sender, on Famulor's retry schedule
scaled by ``SCALE`` (retries after 6, 12 and 24 s instead of 30, 60 and 120 s). Faults:

- the api-server SIGKILLed while receipts arrive, restarted: every receipt is an asset event (none lost;
  a receipt committed just before the kill may be there twice, with one ``dedupe_key``);
- the database locked: 503, then the retry is recorded;
- bad signatures, a replayed signature with another body, oversized and malformed bodies: 4xx and no
  event, nothing else changes;
- the access log never shows the ended-conversation token, nor a full phone number.

Slow (about two minutes): runs only with ``FAMULOR_SYSTEM_TEST=1`` (``make test-system``).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from deployment import AIRFLOW_VERSION, SYSTEM_TEST, AirflowDeployment

from famulor_provider.testing import FamulorSandbox
from famulor_provider.testing.webhooks import signature

pytestmark = [
    SYSTEM_TEST,
    pytest.mark.skipif(
        tuple(int(part) for part in AIRFLOW_VERSION.split(".")[:2]) < (3, 1),
        reason="FastAPI plugin apps: Airflow 3.1+",
    ),
]

SCALE = 0.2  # Famulor's retries after 30, 60, 120 s come after 6, 12, 24 s: 42 s to get back up
SECRETS = {12: "whsec-" + secrets.token_hex(16), 15: "whsec-" + secrets.token_hex(16)}
TOKEN = secrets.token_urlsafe(32)
STATUS_ASSET = "famulor.famulor_default.message_status"
ENDED_ASSET = "famulor.famulor_default.conversation_ended"
FAILED = "+4915199900003"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowDeployment]:
    home = tmp_path_factory.mktemp("webhooks") / "airflow"
    (home / "dags").mkdir(parents=True)
    conn = {
        "conn_type": "famulor",
        "host": "http://127.0.0.1:9/api",  # never called: the receiver needs only the extras
        "password": "sandbox-api-key",
        "extra": {"webhook_signing_secrets": {str(k): v for k, v in SECRETS.items()}, "webhook_token": TOKEN},
    }
    deployment = AirflowDeployment(
        home, {"AIRFLOW_CONN_FAMULOR_DEFAULT": json.dumps(conn)}, api_server_only=True
    )
    try:
        deployment.up()
        deployment.wait_until("the api-server to answer", deployment.api_answers, timeout=180)
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def sandbox(airflow: AirflowDeployment) -> Iterator[FamulorSandbox]:
    base = f"http://127.0.0.1:{airflow.api_port}/famulor/webhooks/famulor_default"
    with FamulorSandbox(
        send_rate_limit=None,
        webhook_time_scale=SCALE,
        conversation_ended_url=f"{base}/conversation-ended/{TOKEN}",
    ) as sb:
        for sender_id, secret in SECRETS.items():
            sb.set_status_webhook(sender_id, f"{base}/message-status", secret)
        yield sb


def status_url(airflow: AirflowDeployment) -> str:
    return f"http://127.0.0.1:{airflow.api_port}/famulor/webhooks/famulor_default/message-status"


def event_keys(airflow: AirflowDeployment, asset: str) -> Counter[str]:
    rows = airflow.query(
        "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?", asset
    )
    return Counter(json.loads(extra)["dedupe_key"] for (extra,) in rows)


def send(sandbox: FamulorSandbox, sender_id: int, phone: str) -> dict[str, Any]:
    body = {
        "sender_id": sender_id,
        "template_id": sender_id * 100 + 1,
        "recipient_phone": phone,
        "variables": ["A"],
    }
    request = urllib.request.Request(
        f"{sandbox.base_url}/user/whatsapp/send",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {sandbox.api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


def post(url: str, raw: bytes, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=raw, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_receipts_survive_an_api_server_kill(airflow: AirflowDeployment, sandbox: FamulorSandbox) -> None:
    sandbox.set_recipient_outcome(FAILED, "failed:131049")
    phones = [f"+49151000{n:05d}" for n in range(40)] + [FAILED]
    before = event_keys(airflow, STATUS_ASSET)

    def send_all() -> None:
        for n, phone in enumerate(phones):
            send(sandbox, 12 if n % 2 else 15, phone)
            time.sleep(0.1)

    sender = threading.Thread(target=send_all)
    sender.start()
    time.sleep(1.5)  # receipts are arriving
    airflow.kill("api-server")
    time.sleep(2)  # refused meanwhile: Famulor's retries must bring them in
    airflow.start_api_server()
    sender.join(60)
    airflow.wait_until("the api-server to answer again", airflow.api_answers, timeout=120)
    assert sandbox.wait_for_webhooks(120), "receipts still pending"

    deliveries = [d for d in sandbox.webhook_deliveries if d["kind"] == "message_status"]
    assert len(deliveries) == 3 * 40 + 2  # sent, delivered, read; the failed one: sent, failed
    assert Counter(d["state"] for d in deliveries) == {"delivered": len(deliveries)}
    refused = [a for d in deliveries for a in d["attempts"] if a["http_status"] != 200]
    assert refused, "the kill should have refused some receipts"
    assert {a["http_status"] for a in refused} <= {None, 503}
    keys = event_keys(airflow, STATUS_ASSET) - before
    assert set(keys) == {d["key"] for d in deliveries}  # none lost
    assert all(count <= 2 for count in keys.values())  # a receipt committed just before the kill
    failed = [k for k in keys if k.endswith(":failed")]
    assert len(failed) == 1
    duplicates = sum(keys.values()) - len(keys)
    print(f"\n{len(deliveries)} receipts, {len(refused)} refused attempts, {duplicates} duplicates")


def test_database_locked_is_503_then_delivered(airflow: AirflowDeployment, sandbox: FamulorSandbox) -> None:
    before = event_keys(airflow, STATUS_ASSET)
    sandbox.set_recipient_outcome("+4915100099999", "sent")  # one receipt
    locker = sqlite3.connect(airflow.db, timeout=30)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        answer = send(sandbox, 12, "+4915100099999")
        airflow.wait_until(
            "the receipt to be refused",
            lambda: any(a["http_status"] == 503 for d in sandbox.webhook_deliveries for a in d["attempts"]),
            timeout=60,
        )
    finally:
        locker.rollback()
        locker.close()
    assert sandbox.wait_for_webhooks(60)
    key = f"{answer['whatsapp_message_id']}:sent"
    (delivery,) = [d for d in sandbox.webhook_deliveries if d["key"] == key]
    assert delivery["state"] == "delivered"
    assert [a["http_status"] for a in delivery["attempts"]][-1] == 200
    assert 503 in [a["http_status"] for a in delivery["attempts"]]
    assert event_keys(airflow, STATUS_ASSET) - before == Counter({key: 1})


def test_forged_and_malformed_requests_change_nothing(airflow: AirflowDeployment) -> None:
    url = status_url(airflow)
    before = event_keys(airflow, STATUS_ASSET), event_keys(airflow, ENDED_ASSET)
    body = {
        "event": "message_status", "whatsapp_message_id": 990001, "status": "delivered",
        "sender": {"id": 12, "phone_number": "+14155551234"}, "to": "+4915100000001",
    }  # fmt: skip
    captured = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Signature-256": signature(SECRETS[12], captured)}
    assert post(url, captured, headers) == 200  # Famulor's request
    forged = json.dumps({**body, "status": "failed", "error_code": 63016}).encode()
    assert post(url, forged, headers) == 401  # its signature replayed with another body
    assert post(url, captured, {"X-Signature-256": signature("guessed", captured)}) == 401
    assert post(url, captured, {"X-Signature-256": signature(SECRETS[15], captured)}) == 401  # other sender's
    assert post(url, captured) == 401
    big = json.dumps({**body, "padding": "x" * 70_000}).encode()
    assert post(url, big, {"X-Signature-256": signature(SECRETS[12], big)}) == 413
    assert post(url, b"{not json", {"X-Signature-256": signature(SECRETS[12], b"{not json")}) == 400
    shapeless = json.dumps({"sender": {"id": 12}}).encode()
    assert post(url, shapeless, {"X-Signature-256": signature(SECRETS[12], shapeless)}) == 422
    ended_url = url.replace("message-status", "conversation-ended/")
    assert post(ended_url + "not-the-token", b"{}") == 401
    assert post(url.replace("famulor_default", "nobody"), captured, headers) == 404
    after = event_keys(airflow, STATUS_ASSET), event_keys(airflow, ENDED_ASSET)
    assert after[0] - before[0] == Counter({"990001:delivered": 1}) and after[1] == before[1]


def test_ended_conversation_and_the_access_log(airflow: AirflowDeployment, sandbox: FamulorSandbox) -> None:
    phone = "+4915100077777"
    send(sandbox, 12, phone)
    sandbox.receive("+14155551234", phone, "Tuesday works, thanks", customer_name="Ada Lovelace")
    posted = sandbox.end_conversation(
        sender_phone="+14155551234", customer_phone=phone, extracted_variables={"day": "Tuesday"}
    )
    assert sandbox.wait_for_webhooks(60)
    assert event_keys(airflow, ENDED_ASSET)[f"{posted['conversation_id']}:ended"] == 1
    [(extra,)] = airflow.query(
        "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?", ENDED_ASSET
    )
    assert json.loads(extra)["payload"]["extracted_variables"] == {"day": "Tuesday"}

    log = airflow.log("api-server")
    assert "/famulor/webhooks/famulor_default/conversation-ended/***" in log  # http.access saw the path
    assert "/famulor/webhooks/famulor_default/message-status" in log
    for secret in (TOKEN, *SECRETS.values(), phone, "Tuesday works", "Ada Lovelace"):
        assert secret not in log, f"{secret[:6]}... reached the api-server log"
    assert "+49151****77" in log  # the receipts' INFO lines, masked
