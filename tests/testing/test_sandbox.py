"""The Famulor sandbox over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pytest
import requests

from famulor_provider.testing import SANDBOX_API_KEY, SEED_SENDERS, FamulorSandbox

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytest_plugins = ["pytester"]

AUTH = {"Authorization": f"Bearer {SANDBOX_API_KEY}", "Accept": "application/json"}
PHONE = "+4915112345678"


@pytest.fixture
def sandbox() -> Iterator[FamulorSandbox]:
    with FamulorSandbox() as sb:
        yield sb


def call(sb: FamulorSandbox, method: str, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("headers", AUTH)
    return requests.request(method, sb.base_url + path, timeout=5, **kwargs)


def send(sb: FamulorSandbox, **body: Any) -> requests.Response:
    payload = {"sender_id": 12, "template_id": 1201, "recipient_phone": PHONE, "variables": {"1": "A-17"}}
    return call(sb, "POST", "/user/whatsapp/send", json={**payload, **body})


def freeform(sb: FamulorSandbox, **body: Any) -> requests.Response:
    payload = {"sender_id": 12, "recipient_phone": PHONE, "message": "Your parcel left the warehouse."}
    return call(sb, "POST", "/user/whatsapp/send-freeform", json={**payload, **body})


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def is_listening(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/api/user/me", timeout=1)
    except requests.ConnectionError:
        return False
    return True


# Lifecycle and connection


def test_listens_on_loopback_and_stops_cleanly() -> None:
    sb = FamulorSandbox()
    sb.start()
    port = sb.port
    assert sb.base_url == f"http://127.0.0.1:{port}/api"
    assert port > 0
    assert is_listening(port)
    sb.stop()
    sb.stop()  # idempotent
    assert not is_listening(port)
    with pytest.raises(RuntimeError, match="not running"):
        _ = sb.port


def test_refuses_a_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FamulorSandbox(host="0.0.0.0")


def test_connection_json_and_env(sandbox: FamulorSandbox) -> None:
    conn = json.loads(sandbox.connection_json())
    assert conn == {
        "conn_type": "famulor",
        "host": sandbox.base_url,
        "password": SANDBOX_API_KEY,
        "extra": {"timeout": 5, "max_retries": 2},
    }
    assert sandbox.env("famulor_sandbox") == {"AIRFLOW_CONN_FAMULOR_SANDBOX": sandbox.connection_json()}
    assert list(sandbox.env()) == ["AIRFLOW_CONN_FAMULOR_DEFAULT"]


# Auth and reads


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic x"}])
def test_missing_or_wrong_key_is_401(sandbox: FamulorSandbox, headers: dict[str, str]) -> None:
    response = call(sandbox, "GET", "/user/me", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthenticated."}


def test_user_me(sandbox: FamulorSandbox) -> None:
    response = call(sandbox, "GET", "/user/me")
    assert response.status_code == 200
    assert response.json() == {
        "name": "Sandbox User",
        "email": "sandbox@example.com",
        "total_balance": 248.75,
    }


def test_requests_are_recorded_without_the_key(sandbox: FamulorSandbox) -> None:
    call(sandbox, "GET", "/user/whatsapp/senders", params={"status": "all"})
    call(sandbox, "GET", "/user/me", headers={})
    first, second = sandbox.requests
    assert (first.method, first.path, first.query, first.status) == (
        "GET",
        "/api/user/whatsapp/senders",
        {"status": "all"},
        200,
    )
    assert (second.path, second.status) == ("/api/user/me", 401)
    assert first.monotonic <= second.monotonic
    assert abs(first.wall_time - time.time()) < 60
    assert SANDBOX_API_KEY not in json.dumps([asdict(r) for r in sandbox.requests])


def test_unknown_route_and_wrong_method(sandbox: FamulorSandbox) -> None:
    missing = call(sandbox, "GET", "/user/whatsapp/nothing")
    assert missing.status_code == 404
    assert missing.json() == {"message": "The route api/user/whatsapp/nothing could not be found."}
    wrong = call(sandbox, "POST", "/user/whatsapp/senders", json={})
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET"


def test_senders_online_by_default_and_all(sandbox: FamulorSandbox) -> None:
    online = call(sandbox, "GET", "/user/whatsapp/senders").json()["data"]
    assert [s["id"] for s in online] == [12, 15, 21, 27]
    assert online[0] == {
        "id": 12,
        "phone_number": "+14155551234",
        "display_name": "Acme Corp Support",
        "status": "online",
        "quality_rating": "GREEN",
        "messaging_limit": 10000,
        "messaging_limit_formatted": "10,000 / 24hr",
    }
    assert (online[1]["messaging_limit"], online[1]["messaging_limit_formatted"]) == (None, "Unlimited")
    everyone = call(sandbox, "GET", "/user/whatsapp/senders", params={"status": "all"}).json()["data"]
    assert {s["id"]: s["status"] for s in everyone} == {
        12: "online", 15: "online", 21: "online", 27: "online", 31: "offline", 33: "connecting",
    }  # fmt: skip
    assert everyone[-1]["quality_rating"] is None


def test_senders_unknown_status_is_422(sandbox: FamulorSandbox) -> None:
    response = call(sandbox, "GET", "/user/whatsapp/senders", params={"status": "offline"})
    assert response.status_code == 422
    assert response.json() == {
        "message": "The selected status is invalid.",
        "errors": {"status": ["The selected status is invalid."]},
    }


def test_custom_senders_and_templates() -> None:
    sender = {"id": 7, "phone_number": "+15550000007", "display_name": "Solo", "status": "online",
              "quality_rating": "GREEN", "messaging_limit": 2000}  # fmt: skip
    template = {"id": 70, "name": "hello", "language": "en", "category": "UTILITY", "status": "approved",
                "body_text": "Hello", "variables": [], "has_variables": False}  # fmt: skip
    with FamulorSandbox(senders=[sender], templates={7: [template]}) as sb:
        senders = call(sb, "GET", "/user/whatsapp/senders").json()["data"]
        assert senders == [{**sender, "messaging_limit_formatted": "2,000 / 24hr"}]
        assert call(sb, "GET", "/user/whatsapp/senders/7/templates").json() == {"data": [template]}


def test_templates_approved_by_default_and_all(sandbox: FamulorSandbox) -> None:
    approved = call(sandbox, "GET", "/user/whatsapp/senders/12/templates").json()["data"]
    assert [(t["id"], t["name"], t["language"]) for t in approved] == [
        (1201, "order_update", "en"),
        (1202, "welcome", "en"),
        (1203, "welcome", "de"),
    ]
    assert approved[0]["variables"] == ["1"]
    assert approved[0]["has_variables"] is True
    assert approved[1]["has_variables"] is False
    everything = call(sandbox, "GET", "/user/whatsapp/senders/12/templates", params={"status": "all"})
    assert [t["status"] for t in everything.json()["data"]] == [
        "approved", "approved", "approved", "pending", "rejected",
    ]  # fmt: skip


def test_templates_of_unknown_sender_is_404(sandbox: FamulorSandbox) -> None:
    response = call(sandbox, "GET", "/user/whatsapp/senders/99/templates")
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": "Sender not found",
        "error_code": "SENDER_NOT_FOUND",
    }


# Sends


def test_send_template_is_accepted_and_billed(sandbox: FamulorSandbox) -> None:
    before = time.time()
    first = send(sandbox, recipient_name="Ada")
    second = send(sandbox, recipient_phone="+4915199999999", variables={"1": "B-2"})
    assert first.status_code == second.status_code == 200
    body = first.json()
    assert body == {
        "success": True,
        "conversation_id": 501,
        "message_id": 1001,
        "whatsapp_message_id": "wamid.SANDBOX000000001001",
        "message_sid": "SM" + format(1001, "032x"),
        "status": "queued",
    }
    assert (second.json()["message_id"], second.json()["conversation_id"]) == (1002, 502)
    first_entry, second_entry = sandbox.ledger
    assert first_entry == {
        "message_id": 1001,
        "conversation_id": 501,
        "kind": "template",
        "sender_id": 12,
        "recipient_phone": PHONE,
        "recipient_name": "Ada",
        "template_id": 1201,
        "variables": {"1": "A-17"},
        "message": None,
        "accepted_at": first_entry["accepted_at"],
    }
    assert before <= first_entry["accepted_at"] <= second_entry["accepted_at"] <= time.time()
    assert second_entry["variables"] == {"1": "B-2"}


@pytest.mark.parametrize(
    ("body", "status", "error_code"),
    [
        ({"sender_id": 99}, 404, "SENDER_NOT_FOUND"),
        ({"template_id": 9999}, 404, "TEMPLATE_NOT_FOUND"),
        ({"sender_id": 31, "template_id": 3101}, 422, "SENDER_OFFLINE"),
        ({"sender_id": 33, "template_id": 3301}, 422, "SENDER_OFFLINE"),
        ({"template_id": 1204}, 422, "TEMPLATE_NOT_APPROVED"),
        ({"template_id": 1205}, 422, "TEMPLATE_NOT_APPROVED"),
        ({"template_id": 1501}, 404, "TEMPLATE_NOT_FOUND"),  # another sender's template
        ({"recipient_phone": "4915112345678"}, 422, "INVALID_PHONE"),
        ({"recipient_phone": "+49 151 1234"}, 422, "INVALID_PHONE"),
    ],
)
def test_send_errors(sandbox: FamulorSandbox, body: dict[str, Any], status: int, error_code: str) -> None:
    response = send(sandbox, **body)
    assert response.status_code == status
    assert response.json()["success"] is False
    assert response.json()["error_code"] == error_code
    assert sandbox.ledger == []


def test_send_validation_errors_are_laravel_shaped(sandbox: FamulorSandbox) -> None:
    response = call(sandbox, "POST", "/user/whatsapp/send", json={"sender_id": "twelve"})
    assert response.status_code == 422
    assert response.json() == {
        "message": "The sender id field must be an integer. (and 2 more errors)",
        "errors": {
            "sender_id": ["The sender id field must be an integer."],
            "template_id": ["The template id field is required."],
            "recipient_phone": ["The recipient phone field is required."],
        },
    }
    not_json = call(sandbox, "POST", "/user/whatsapp/send", data=b"{broken")
    assert not_json.status_code == 422
    assert sandbox.ledger == []


def test_freeform_needs_an_open_session(sandbox: FamulorSandbox) -> None:
    expired = freeform(sandbox)
    assert expired.status_code == 403
    assert expired.json()["error_code"] == "SESSION_EXPIRED"
    assert sandbox.ledger == []

    assert send(sandbox).status_code == 200  # an accepted template opens the window
    response = freeform(sandbox)
    assert response.status_code == 200
    assert response.json()["message_id"] == 1002
    assert response.json()["conversation_id"] == 501
    entry = sandbox.ledger[-1]
    assert (entry["kind"], entry["message"], entry["template_id"]) == (
        "freeform",
        "Your parcel left the warehouse.",
        None,
    )


def test_freeform_with_open_session_and_errors(sandbox: FamulorSandbox) -> None:
    sandbox.open_session(15, "+447700900123", minutes=30)
    assert freeform(sandbox, sender_id=15, recipient_phone="+447700900123").status_code == 200
    offline = freeform(sandbox, sender_id=31)
    assert (offline.status_code, offline.json()["error_code"]) == (503, "SENDER_OFFLINE")
    too_long = freeform(sandbox, sender_id=15, recipient_phone="+447700900123", message="x" * 4097)
    assert too_long.status_code == 422
    assert too_long.json()["errors"] == {
        "message": ["The message field must not be greater than 4096 characters."]
    }
    sandbox.open_session(15, "+447700900123", minutes=-1)
    assert freeform(sandbox, sender_id=15, recipient_phone="+447700900123").status_code == 403
    assert [e["recipient_phone"] for e in sandbox.ledger] == ["+447700900123"]


def test_session_status(sandbox: FamulorSandbox) -> None:
    def status(phone: str) -> requests.Response:
        # requests encodes "+" as %2B, as clients must
        params = {"sender_id": 12, "recipient_phone": phone}
        return call(sandbox, "GET", "/user/whatsapp/session-status", params=params)

    none = status(PHONE).json()
    assert none["success"] is True
    assert none["has_conversation"] is False
    assert none["session_status"]["requires_template"] is True

    sandbox.open_session(12, PHONE, minutes=90)
    assert "recipient_phone=%2B49" in str(status(PHONE).request.path_url)
    opened = status(PHONE).json()["session_status"]
    assert (opened["is_open"], opened["can_send_freeform"], opened["requires_template"]) == (
        True,
        True,
        False,
    )
    assert 88 <= opened["minutes_remaining"] <= 90
    assert opened["expires_at"].endswith("Z")

    sandbox.open_session(12, PHONE, minutes=-5)
    expired = status(PHONE).json()
    assert expired["has_conversation"] is True
    assert expired["session_status"]["is_open"] is False
    assert "expired_at" in expired["session_status"]


def test_session_status_with_an_unencoded_plus_is_invalid_phone(sandbox: FamulorSandbox) -> None:
    url = f"{sandbox.base_url}/user/whatsapp/session-status?sender_id=12&recipient_phone={PHONE}"
    response = requests.get(url, headers=AUTH, timeout=5)
    assert response.status_code == 422
    assert response.json()["error_code"] == "INVALID_PHONE"
    assert "%2B" in response.json()["error"]
    assert sandbox.requests[-1].query["recipient_phone"] == " 4915112345678"


def test_session_status_errors(sandbox: FamulorSandbox) -> None:
    params = {"sender_id": 99, "recipient_phone": PHONE}
    unknown = call(sandbox, "GET", "/user/whatsapp/session-status", params=params)
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, "SENDER_NOT_FOUND")
    missing = call(sandbox, "GET", "/user/whatsapp/session-status")
    assert missing.status_code == 422
    assert set(missing.json()["errors"]) == {"sender_id", "recipient_phone"}


def test_send_rate_limit() -> None:
    with FamulorSandbox(send_rate_limit=2) as sb:
        codes = [send(sb).status_code for _ in range(2)]
        limited = send(sb, sender_id="not validated before the throttle")
        assert codes == [200, 200]
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "1"
        assert limited.json() == {"message": "Too Many Attempts.", "retry_after": 1}
        assert call(sb, "GET", "/user/me").status_code == 200  # reads are not limited
        assert len(sb.ledger) == 2


# Sender changes


def test_set_add_remove_sender(sandbox: FamulorSandbox) -> None:
    sandbox.set_sender(31, status="online", quality_rating="RED", messaging_limit=250)
    senders = {s["id"]: s for s in call(sandbox, "GET", "/user/whatsapp/senders").json()["data"]}
    assert senders[31]["quality_rating"] == "RED"
    assert senders[31]["messaging_limit_formatted"] == "250 / 24hr"
    sandbox.add_sender({"id": 40, "phone_number": "+15550000040", "display_name": "New", "status": "online",
                        "quality_rating": None})  # fmt: skip
    sandbox.remove_sender(12)
    ids = [s["id"] for s in call(sandbox, "GET", "/user/whatsapp/senders").json()["data"]]
    assert ids == [15, 21, 27, 31, 40]
    assert call(sandbox, "GET", "/user/whatsapp/senders/40/templates").json()["data"][0]["id"] == 4001
    assert send(sandbox).json()["error_code"] == "SENDER_NOT_FOUND"
    with pytest.raises(KeyError):
        sandbox.set_sender(12, status="online")


def test_schedule_sender_flips_after_the_delay(sandbox: FamulorSandbox) -> None:
    def online_ids() -> list[int]:
        return [s["id"] for s in call(sandbox, "GET", "/user/whatsapp/senders").json()["data"]]

    start = time.monotonic()
    sandbox.schedule_sender(31, 0.3, status="online")
    assert 31 not in online_ids()
    wait_for(lambda: 31 in online_ids())
    assert time.monotonic() - start >= 0.3
    with pytest.raises(KeyError):
        sandbox.schedule_sender(99, 1, status="online")


def test_a_later_set_sender_wins_over_an_overdue_scheduled_change(sandbox: FamulorSandbox) -> None:
    sandbox.schedule_sender(31, 0.05, status="online", quality_rating="YELLOW")
    time.sleep(0.1)
    sandbox.set_sender(31, status="offline")
    sender = next(s for s in sandbox.senders if s["id"] == 31)
    assert (sender["status"], sender["quality_rating"]) == ("offline", "YELLOW")


# Faults


def test_status_fault_by_path_and_times(sandbox: FamulorSandbox) -> None:
    sandbox.inject("status", path="/senders", times=2, status=503)
    assert call(sandbox, "GET", "/user/me").status_code == 200  # other paths unaffected
    first = call(sandbox, "GET", "/user/whatsapp/senders")
    assert (first.status_code, first.json()) == (503, {"message": "Service Unavailable"})
    assert call(sandbox, "GET", "/user/whatsapp/senders").status_code == 503
    assert call(sandbox, "GET", "/user/whatsapp/senders").status_code == 200  # used up


def test_429_fault_with_retry_after(sandbox: FamulorSandbox) -> None:
    sandbox.inject("status", status=429, retry_after=7)
    sandbox.inject("status", status=429)
    sandbox.inject("status", status=500, body={"error": "boom", "message": "Oops"})
    with_header = call(sandbox, "GET", "/user/me")
    assert with_header.status_code == 429
    assert with_header.headers["Retry-After"] == "7"
    assert with_header.json() == {"message": "Too Many Attempts.", "retry_after": 7}
    without_header = call(sandbox, "GET", "/user/me")
    assert without_header.status_code == 429
    assert "Retry-After" not in without_header.headers
    custom = call(sandbox, "GET", "/user/me")
    assert (custom.status_code, custom.json()) == (500, {"error": "boom", "message": "Oops"})


def test_html_invalid_json_and_no_data_faults(sandbox: FamulorSandbox) -> None:
    sandbox.inject("html")
    sandbox.inject("invalid_json")
    sandbox.inject("no_data")
    html = call(sandbox, "GET", "/user/whatsapp/senders")
    assert html.status_code == 200
    assert html.headers["Content-Type"].startswith("text/html")
    assert html.text.startswith("<!DOCTYPE html>")
    broken = call(sandbox, "GET", "/user/whatsapp/senders")
    assert broken.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        broken.json()
    assert call(sandbox, "GET", "/user/whatsapp/senders").json() == {"items": []}
    assert len(call(sandbox, "GET", "/user/whatsapp/senders").json()["data"]) == 4


def test_delay_fault(sandbox: FamulorSandbox) -> None:
    sandbox.inject("delay", delay=0.3)
    start = time.monotonic()
    response = call(sandbox, "GET", "/user/me")
    assert time.monotonic() - start >= 0.3
    assert response.status_code == 200
    with pytest.raises(requests.Timeout):
        sandbox.inject("delay", delay=1)
        requests.get(sandbox.base_url + "/user/me", headers=AUTH, timeout=0.2)


def test_drop_fault_loses_the_request_before_anything_happens(sandbox: FamulorSandbox) -> None:
    sandbox.inject("drop", path="/whatsapp/send")
    with pytest.raises(requests.ConnectionError):
        send(sandbox)
    assert sandbox.ledger == []
    assert sandbox.requests[-1].status is None
    assert send(sandbox).status_code == 200


def test_accept_then_drop_bills_but_loses_the_response(sandbox: FamulorSandbox) -> None:
    sandbox.inject("accept_then_drop", path="/whatsapp/send")
    with pytest.raises(requests.ConnectionError):
        send(sandbox)
    assert [(e["message_id"], e["recipient_phone"]) for e in sandbox.ledger] == [(1001, PHONE)]
    assert send(sandbox).json()["message_id"] == 1002


def test_send_faults(sandbox: FamulorSandbox) -> None:
    sandbox.open_session(12, PHONE)
    sandbox.inject("sender_offline", times=2)
    sandbox.inject("insufficient_balance")
    sandbox.inject("session_expired")
    assert call(sandbox, "GET", "/user/whatsapp/senders").status_code == 200  # send faults skip reads
    offline_send, offline_freeform = send(sandbox), freeform(sandbox)
    assert (offline_send.status_code, offline_send.json()["error_code"]) == (422, "SENDER_OFFLINE")
    assert (offline_freeform.status_code, offline_freeform.json()["error_code"]) == (503, "SENDER_OFFLINE")
    broke = send(sandbox)
    assert (broke.status_code, broke.json()["error_code"]) == (402, "INSUFFICIENT_BALANCE")
    assert send(sandbox).status_code == 200  # session_expired only applies to free-form
    expired = freeform(sandbox)  # despite the open session
    assert (expired.status_code, expired.json()["error_code"]) == (403, "SESSION_EXPIRED")
    assert freeform(sandbox).status_code == 200
    assert [e["kind"] for e in sandbox.ledger] == ["template", "freeform"]


def test_fault_by_recipient_phone_and_clear(sandbox: FamulorSandbox) -> None:
    sandbox.inject("insufficient_balance", recipient_phone="+4915100000000", times=5)
    assert send(sandbox).status_code == 200
    assert send(sandbox, recipient_phone="+4915100000000").status_code == 402
    sandbox.clear_faults()
    assert send(sandbox, recipient_phone="+4915100000000").status_code == 200


def test_inject_rejects_bad_faults(sandbox: FamulorSandbox) -> None:
    with pytest.raises(ValueError, match="Unknown fault"):
        sandbox.inject("explode")
    with pytest.raises(ValueError, match="status="):
        sandbox.inject("status")
    with pytest.raises(ValueError, match="times"):
        sandbox.inject("drop", times=0)


# Control API


def test_control_api(sandbox: FamulorSandbox) -> None:
    control = sandbox.base_url.removesuffix("/api") + "/_sandbox"
    fault = {"fault": "status", "status": 502, "path": "/user/me"}
    assert requests.post(f"{control}/faults", json=fault, timeout=5).json() == {"ok": True}
    assert call(sandbox, "GET", "/user/me").status_code == 502
    requests.post(f"{control}/faults", json={"fault": "drop"}, timeout=5)
    assert requests.delete(f"{control}/faults", timeout=5).status_code == 200
    assert call(sandbox, "GET", "/user/me").status_code == 200
    bad = requests.post(f"{control}/faults", json={"fault": "explode"}, timeout=5)
    assert bad.status_code == 400
    assert "Unknown fault" in bad.json()["message"]

    assert requests.post(f"{control}/senders/31", json={"quality_rating": "YELLOW"}, timeout=5).ok
    assert requests.post(
        f"{control}/senders/31", json={"status": "online", "after_seconds": 0.2}, timeout=5
    ).ok
    assert requests.post(f"{control}/senders/99", json={"status": "online"}, timeout=5).status_code == 404
    wait_for(
        lambda: any(s["id"] == 31 for s in call(sandbox, "GET", "/user/whatsapp/senders").json()["data"])
    )
    assert next(s for s in sandbox.senders if s["id"] == 31)["quality_rating"] == "YELLOW"

    session = {"sender_id": 15, "recipient_phone": PHONE, "minutes": 10}
    assert requests.post(f"{control}/sessions", json=session, timeout=5).ok
    assert freeform(sandbox, sender_id=15).status_code == 200
    ledger = requests.get(f"{control}/ledger", timeout=5).json()["data"]
    assert [(e["sender_id"], e["kind"]) for e in ledger] == [(15, "freeform")]
    recorded = requests.get(f"{control}/requests", timeout=5).json()["data"]
    assert [(r["path"], r["status"]) for r in recorded[:2]] == [("/api/user/me", 502), ("/api/user/me", 200)]
    assert {r["path"] for r in recorded[2:-1]} == {"/api/user/whatsapp/senders"}  # the polling above
    assert (recorded[-1]["path"], recorded[-1]["method"]) == ("/api/user/whatsapp/send-freeform", "POST")


# CLI


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "famulor_provider.testing", "serve", "--port-file", str(port_file),
         "--api-key", "cli-key", "--sender-online-after", "31=0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: port_file.exists() or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        port = int(port_file.read_text())
        base_url = f"http://127.0.0.1:{port}/api"
        headers = {"Authorization": "Bearer cli-key"}
        assert (
            requests.get(f"{base_url}/user/me", headers=headers, timeout=5).json()["name"] == "Sandbox User"
        )
        assert requests.get(f"{base_url}/user/me", headers=AUTH, timeout=5).status_code == 401

        def online_ids() -> list[int]:
            response = requests.get(f"{base_url}/user/whatsapp/senders", headers=headers, timeout=5)
            return [s["id"] for s in response.json()["data"]]

        wait_for(lambda: 31 in online_ids())
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert f"listening on {base_url}" in out
        assert not is_listening(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_refuses_a_non_loopback_host() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "famulor_provider.testing", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr


# pytest plugin


def test_fixture_sets_the_default_connection(famulor_sandbox: FamulorSandbox) -> None:
    import os

    assert os.environ["AIRFLOW_CONN_FAMULOR_DEFAULT"] == famulor_sandbox.connection_json()
    assert call(famulor_sandbox, "GET", "/user/me").status_code == 200


def test_fixture_works_with_the_hook(famulor_sandbox: FamulorSandbox) -> None:
    from famulor_provider.hooks.famulor import FamulorHook

    ok, message = FamulorHook().test_connection()
    assert ok, message
    assert famulor_sandbox.requests[-1].path == "/api/user/me"


def test_fixture_stops_the_server_when_the_test_fails(pytester: pytest.Pytester, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    pytester.makepyfile(
        f"""
        def test_fails(famulor_sandbox):
            open({str(port_file)!r}, "w").write(str(famulor_sandbox.port))
            assert False, "boom"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert not is_listening(int(port_file.read_text()))


def test_seed_data_is_exported() -> None:
    assert [s["id"] for s in SEED_SENDERS] == [12, 15, 21, 27, 31, 33]
