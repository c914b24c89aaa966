"""The webhook receiver's app with FastAPI's TestClient against the session's migrated DB (Airflow 3.1+)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import pytest
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS

if not AIRFLOW_V_3_1_PLUS:
    pytest.skip("FastAPI plugin apps need Airflow 3.1+", allow_module_level=True)

from delivery_receipts import stored_extras
from fastapi.testclient import TestClient

from famulor_provider.webhooks import receiver
from famulor_provider.webhooks.receiver import MAX_ENDED_BODY, MAX_STATUS_BODY, create_app, redact_path

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

SECRET = "whsec-sender-12"
OTHER_SECRET = "whsec-sender-15"
TOKEN = "Xq3v9W2b7mN4kP8sR1tY6uZ0aC5dE2fG7hJ9kL3mN5p"
CONVERSATION = "8d0f7780-1c2b-4d3e-9f00-1234567890ab"


def receipt(status: str = "delivered", *, sender_id: int = 12, message_id: int = 7001, **extra: Any) -> dict:
    return {
        "event": "message_status",
        "whatsapp_message_id": message_id,
        "message_sid": "SM00000000000000000000000000003e9",
        "meta_message_id": "wamid.SANDBOX000000001001",
        "conversation_id": CONVERSATION,
        "assistant_id": "a1b2",
        "sender": {"id": sender_id, "phone_number": "+14155551234", "display_name": "Acme Corp Support"},
        "to": "+4915112345678",
        "from": "+14155551234",
        "direction": "outbound",
        "status": status,
        "error_code": None,
        "error_message": None,
        "error_description": None,
        "timestamp": "2026-12-07T12:00:00.000000Z",
        "provider_timestamp": "2026-12-07T12:00:00.000000Z",
        **extra,
    }


def ended(**extra: Any) -> dict:
    return {
        "id": 1,
        "conversation_id": CONVERSATION,
        "assistant_id": "a1b2",
        "type": "whatsapp",
        "message_count": 2,
        "status": "ended",
        "extracted_variables": {"day": "Tuesday"},
        "input_variables": {},
        "transcript": [{"role": "user", "content": "Tuesday works", "timestamp": "x", "timestamp_unix": 1}],
        "formatted_transcript": "user: Tuesday works",
        "attachments": [],
        "customer_phone": "+4915112345678",
        "customer_name": "Ada",
        "sender": {"phone_number": "+14155551234", "display_name": "Acme"},
        "created_at": "2026-12-07T11:00:00Z",
        "ended_at": "2026-12-07T12:00:00Z",
        **extra,
    }


def sign(raw: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "X-Signature-256": "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json",
    }


@pytest.fixture
def client() -> Iterator[TestClient]:
    receiver.settings_cache.clear()
    with TestClient(create_app()) as c:
        yield c
    receiver.settings_cache.clear()


@pytest.fixture
def famulor_conn(airflow_conn: Callable[..., str]) -> Callable[..., str]:
    """``famulor_conn(conn_id="fam_wh", **extras)``: a Famulor connection with webhook extras."""

    def make(conn_id: str = "fam_wh", **extra: Any) -> str:
        airflow_conn(
            conn_id, conn_type="famulor", host="https://app.famulor.de/api", password="k", extra=extra
        )
        receiver.settings_cache.clear()
        return conn_id

    return make


@pytest.fixture
def unique_conn(famulor_conn: Callable[..., str], request: pytest.FixtureRequest) -> str:
    """A connection id of this test only (its assets start empty), with one signing secret and a token."""
    conn_id = "wh_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    return famulor_conn(conn_id, webhook_signing_secrets=SECRET, webhook_token=TOKEN)


def post_receipt(client: TestClient, conn_id: str, body: dict, secret: str = SECRET) -> Any:
    raw = json.dumps(body).encode()
    return client.post(f"/webhooks/{conn_id}/message-status", content=raw, headers=sign(raw, secret))


# Receipts


def test_a_signed_receipt_becomes_one_asset_event(client: TestClient, unique_conn: str) -> None:
    body = receipt("read")
    raw = json.dumps(body, indent=1).encode()  # the bytes as sent are what is signed, whitespace too
    response = client.post(f"/webhooks/{unique_conn}/message-status", content=raw, headers=sign(raw))
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "dedupe_key": "7001:read"}
    assert stored_extras(f"famulor.{unique_conn}.message_status") == [
        {"payload": body, "dedupe_key": "7001:read"}
    ]

    from airflow.models.asset import AssetActive
    from airflow.utils.session import create_session

    with create_session() as session:  # created active, so the event does not warn about it
        assert session.get(AssetActive, (f"famulor.{unique_conn}.message_status",) * 2) is not None


def test_the_same_receipt_twice_gives_two_events_with_one_dedupe_key(
    client: TestClient, unique_conn: str
) -> None:
    for _ in range(2):
        assert post_receipt(client, unique_conn, receipt("sent")).status_code == 200
    keys = [e["dedupe_key"] for e in stored_extras(f"famulor.{unique_conn}.message_status")]
    assert keys == ["7001:sent", "7001:sent"]


def test_per_sender_secrets(client: TestClient, famulor_conn: Callable[..., str]) -> None:
    conn_id = famulor_conn("wh_senders", webhook_signing_secrets={"12": SECRET, "15": OTHER_SECRET})
    assert post_receipt(client, conn_id, receipt(sender_id=12), SECRET).status_code == 200
    assert (
        post_receipt(client, conn_id, receipt(sender_id=15, message_id=7002), OTHER_SECRET).status_code == 200
    )
    # Sender 15's receipt signed with sender 12's secret; a sender without a secret.
    assert post_receipt(client, conn_id, receipt(sender_id=15, message_id=7003), SECRET).status_code == 401
    assert post_receipt(client, conn_id, receipt(sender_id=21, message_id=7004), SECRET).status_code == 401
    keys = [e["dedupe_key"] for e in stored_extras("famulor.wh_senders.message_status")]
    assert keys == ["7001:delivered", "7002:delivered"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Signature-256": "deadbeef"},
        {"X-Signature-256": "sha256="},
        {"X-Signature-256": "sha256=" + "0" * 64},
        {"X-Signature-256": "sha1=" + "0" * 40},
    ],
    ids=["missing", "no-prefix", "empty", "wrong", "other-algorithm"],
)
def test_bad_signatures_are_401_without_event(client: TestClient, unique_conn: str, headers: dict) -> None:
    response = client.post(
        f"/webhooks/{unique_conn}/message-status", content=json.dumps(receipt()), headers=headers
    )
    assert response.status_code == 401
    assert stored_extras(f"famulor.{unique_conn}.message_status") == []


def test_a_replayed_signature_with_another_body_is_401(client: TestClient, unique_conn: str) -> None:
    captured = json.dumps(receipt("sent")).encode()
    headers = sign(captured)
    assert (
        client.post(f"/webhooks/{unique_conn}/message-status", content=captured, headers=headers).status_code
        == 200
    )
    forged = json.dumps(receipt("failed", error_code=63016)).encode()
    response = client.post(f"/webhooks/{unique_conn}/message-status", content=forged, headers=headers)
    assert response.status_code == 401
    assert [e["dedupe_key"] for e in stored_extras(f"famulor.{unique_conn}.message_status")] == ["7001:sent"]


def test_oversized_bodies_are_413(client: TestClient, unique_conn: str) -> None:
    big = json.dumps(receipt(padding="x" * MAX_STATUS_BODY)).encode()
    response = client.post(f"/webhooks/{unique_conn}/message-status", content=big, headers=sign(big))
    assert response.status_code == 413
    assert str(MAX_STATUS_BODY) in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    response = client.post(f"/webhooks/{unique_conn}/message-status", content=chunks(), headers=sign(big))
    assert response.status_code == 413
    huge = json.dumps(ended(padding="x" * MAX_ENDED_BODY)).encode()
    response = client.post(f"/webhooks/{unique_conn}/conversation-ended/{TOKEN}", content=huge)
    assert response.status_code == 413
    assert stored_extras(f"famulor.{unique_conn}.message_status") == []
    assert stored_extras(f"famulor.{unique_conn}.conversation_ended") == []


@pytest.mark.parametrize(("raw", "detail"), [(b"not json", "not JSON"), (b"[1, 2]", "not a JSON object")])
def test_malformed_bodies_are_400(
    client: TestClient, famulor_conn: Callable[..., str], raw: bytes, detail: str
) -> None:
    one = famulor_conn("wh_one", webhook_signing_secrets=SECRET)
    per_sender = famulor_conn("wh_per_sender", webhook_signing_secrets={"12": SECRET})
    for conn_id in (one, per_sender):
        response = client.post(f"/webhooks/{conn_id}/message-status", content=raw, headers=sign(raw))
        assert (response.status_code, detail in response.json()["detail"]) == (400, True)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"event": "inbound"}, 'event must be "message_status"'),
        ({"whatsapp_message_id": None}, "whatsapp_message_id must be an integer"),
        ({"status": None}, "status must be one of"),
        ({"sender": "12"}, "sender.id is missing"),
    ],
)
def test_wrong_shape_is_422(client: TestClient, unique_conn: str, change: dict, problem: str) -> None:
    response = post_receipt(client, unique_conn, {**receipt(), **change})
    assert response.status_code == 422
    assert problem in response.json()["detail"]
    assert stored_extras(f"famulor.{unique_conn}.message_status") == []


def test_unknown_configuration_is_404(
    client: TestClient, famulor_conn: Callable[..., str], airflow_conn: Callable[..., str]
) -> None:
    assert post_receipt(client, "no_such_conn", receipt()).status_code == 404
    airflow_conn(
        "an_http_conn", conn_type="http", host="example.com", extra={"webhook_signing_secrets": SECRET}
    )
    assert post_receipt(client, "an_http_conn", receipt()).status_code == 404
    famulor_conn("wh_nothing")  # a Famulor connection without webhook extras
    assert post_receipt(client, "wh_nothing", receipt()).status_code == 404
    assert client.post(f"/webhooks/wh_nothing/conversation-ended/{TOKEN}", json=ended()).status_code == 404
    famulor_conn("wh_short", webhook_token="too-short")  # refused: a guessable token
    assert client.post("/webhooks/wh_short/conversation-ended/too-short", json=ended()).status_code == 404
    assert post_receipt(client, "bad%20id", receipt()).status_code == 404


def test_test_events_are_acknowledged_without_event_unless_asked(
    client: TestClient, famulor_conn: Callable[..., str]
) -> None:
    test_body = receipt(test=True, message_id=123456789)
    quiet = famulor_conn("wh_quiet", webhook_signing_secrets=SECRET)
    response = post_receipt(client, quiet, test_body)
    assert response.status_code == 200 and response.json() == {"ok": True, "test": True, "event": False}
    assert stored_extras("famulor.wh_quiet.message_status") == []
    loud = famulor_conn("wh_loud", webhook_signing_secrets=SECRET, webhook_emit_test_events=True)
    assert post_receipt(client, loud, test_body).status_code == 200
    assert stored_extras("famulor.wh_loud.message_status") == [
        {"payload": test_body, "dedupe_key": "123456789:delivered"}
    ]
    # A test event is still verified: a wrong signature is a 401.
    assert post_receipt(client, quiet, test_body, "wrong").status_code == 401


# Ended conversations


def test_an_ended_conversation_with_the_token_becomes_one_asset_event(
    client: TestClient, unique_conn: str
) -> None:
    body = ended()
    response = client.post(f"/webhooks/{unique_conn}/conversation-ended/{TOKEN}", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "dedupe_key": f"{CONVERSATION}:ended"}
    assert stored_extras(f"famulor.{unique_conn}.conversation_ended") == [
        {"payload": body, "dedupe_key": f"{CONVERSATION}:ended"}
    ]


@pytest.mark.parametrize("token", [TOKEN[:-1] + "q", TOKEN[:-1], TOKEN + "x", "x"])
def test_a_wrong_token_is_401(client: TestClient, unique_conn: str, token: str) -> None:
    response = client.post(f"/webhooks/{unique_conn}/conversation-ended/{token}", json=ended())
    assert response.status_code == 401
    assert stored_extras(f"famulor.{unique_conn}.conversation_ended") == []


def test_ended_wrong_shape_and_not_json(client: TestClient, unique_conn: str) -> None:
    url = f"/webhooks/{unique_conn}/conversation-ended/{TOKEN}"
    assert client.post(url, json=ended(status="active")).status_code == 422
    assert client.post(url, json=ended(conversation_id=None)).status_code == 422
    assert client.post(url, content=b"{").status_code == 400
    assert stored_extras(f"famulor.{unique_conn}.conversation_ended") == []


# Nothing else, the database, the logs


def test_nothing_else_is_reachable(client: TestClient, unique_conn: str) -> None:
    for path in ("/", "/docs", "/openapi.json", "/redoc", f"/webhooks/{unique_conn}", "/webhooks"):
        assert client.get(path).status_code == 404, path
    assert client.get(f"/webhooks/{unique_conn}/message-status").status_code == 405
    assert client.get(f"/webhooks/{unique_conn}/conversation-ended/{TOKEN}").status_code == 405


def test_database_locked_is_503_then_delivered(
    client: TestClient, unique_conn: str, airflow_db: Path
) -> None:
    locker = sqlite3.connect(airflow_db, timeout=1)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        response = post_receipt(client, unique_conn, receipt("read"))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "30"
        assert time.monotonic() - started < 60
    finally:
        locker.rollback()
        locker.close()
    assert stored_extras(f"famulor.{unique_conn}.message_status") == []
    assert post_receipt(client, unique_conn, receipt("read")).status_code == 200  # Famulor's retry
    assert [e["dedupe_key"] for e in stored_extras(f"famulor.{unique_conn}.message_status")] == ["7001:read"]


def test_logs_mask_the_number_and_carry_no_secret_or_text(
    client: TestClient, unique_conn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="famulor_provider")
    assert post_receipt(client, unique_conn, receipt("failed", error_code=63016)).status_code == 200
    assert client.post(f"/webhooks/{unique_conn}/conversation-ended/{TOKEN}", json=ended()).status_code == 200
    assert post_receipt(client, unique_conn, receipt(), "wrong-secret").status_code == 401
    text = caplog.text
    assert "Famulor receipt failed: message 7001 from sender 12 to +49151****78 (error 63016)" in text
    assert f"Famulor conversation {CONVERSATION} ended (2 messages, customer +49151****78)" in text
    for secret in ("+4915112345678", SECRET, TOKEN, "Tuesday", "Ada", "wrong-secret"):
        assert secret not in text


def test_the_token_is_redacted_from_the_path_the_access_logs_read(unique_conn: str) -> None:
    """uvicorn's access log (Airflow 3.1) reads ``raw_path`` when the answer starts, Airflow 3.3's
    ``http.access`` reads ``path`` once the app returned: both see ``***`` instead of the token."""
    seen: list[tuple[str, str]] = []
    app = create_app()

    async def access_logs(scope: dict, receive: Any, send: Any) -> None:
        async def uvicorn_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen.append(("uvicorn", scope["raw_path"].decode()))
            await send(message)

        try:
            await app(scope, receive, uvicorn_send)
        finally:
            seen.append(("http.access", scope["path"]))

    receiver.settings_cache.clear()
    with TestClient(access_logs) as client:
        assert (
            client.post(f"/webhooks/{unique_conn}/conversation-ended/{TOKEN}", json=ended()).status_code
            == 200
        )
        assert (
            client.post(f"/webhooks/{unique_conn}/conversation-ended/wrong", json=ended()).status_code == 401
        )
    redacted = f"/webhooks/{unique_conn}/conversation-ended/***"
    assert seen == [("uvicorn", redacted), ("http.access", redacted)] * 2
    assert redact_path("/famulor/webhooks/c/message-status") == "/famulor/webhooks/c/message-status"


def test_the_plugin_mounts_the_app_in_airflows_api_server_app(
    unique_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow's own app factory (what ``airflow api-server`` serves) mounts ``/famulor``."""
    from airflow.api_fastapi.app import create_app as create_airflow_app

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-jwt-secret-of-32-characters!")

    receiver.settings_cache.clear()
    with TestClient(create_airflow_app()) as client:
        body = receipt("sent", message_id=9001)
        raw = json.dumps(body).encode()
        response = client.post(
            f"/famulor/webhooks/{unique_conn}/message-status", content=raw, headers=sign(raw)
        )
        assert response.status_code == 200, response.text
        assert client.post(f"/famulor/webhooks/{unique_conn}/message-status", content=raw).status_code == 401
        assert client.get("/famulor/docs").status_code == 404
    assert stored_extras(f"famulor.{unique_conn}.message_status") == [
        {"payload": body, "dedupe_key": "9001:sent"}
    ]
