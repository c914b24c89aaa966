"""The Famulor sandbox over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pytest
import requests
from sandbox_client import AUTH, OTHER, PHONE, call, freeform, is_listening, send, serve, stop, wait_for

from famulor_provider.testing import DEFAULT_SEND_RATE_LIMIT, SANDBOX_API_KEY, SEED_SENDERS, FamulorSandbox

if TYPE_CHECKING:
    from pathlib import Path

pytest_plugins = ["pytester"]

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


def test_senders_offline(sandbox: FamulorSandbox) -> None:
    offline = call(sandbox, "GET", "/user/whatsapp/senders", params={"status": "offline"})
    assert offline.status_code == 200
    assert [(s["id"], s["status"]) for s in offline.json()["data"]] == [(31, "offline")]
    sandbox.set_sender(12, status="offline")
    offline = call(sandbox, "GET", "/user/whatsapp/senders", params={"status": "offline"})
    assert [s["id"] for s in offline.json()["data"]] == [12, 31]  # not 33: "connecting" is no "offline"
    assert [s["id"] for s in call(sandbox, "GET", "/user/whatsapp/senders").json()["data"]] == [15, 21, 27]


@pytest.mark.parametrize("status", ["OFFLINE", "connecting", "any"])
def test_senders_unknown_status_is_422(sandbox: FamulorSandbox, status: str) -> None:
    response = call(sandbox, "GET", "/user/whatsapp/senders", params={"status": status})
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
        "whatsapp_message_id": 7001,
        "message_sid": "SM" + format(1001, "032x"),
        "status": "queued",
    }
    assert (second.json()["message_id"], second.json()["conversation_id"]) == (1002, 502)
    first_entry, second_entry = sandbox.ledger
    assert first_entry == {
        "message_id": 1001,
        "whatsapp_message_id": 7001,
        "meta_message_id": "wamid.SANDBOX000000001001",
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


def test_send_rate_limit_is_on_by_default_and_rolls(sandbox: FamulorSandbox) -> None:
    assert sandbox.send_rate_limit == DEFAULT_SEND_RATE_LIMIT == 5
    sandbox.inject("insufficient_balance", recipient_phone=OTHER)
    first_send = time.monotonic()
    codes = [send(sandbox, recipient_phone=f"+49151000000{i}").status_code for i in range(5)]
    limited = send(sandbox, recipient_phone=OTHER)
    assert codes == [200] * 5
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.json() == {"message": "Too Many Attempts.", "retry_after": 1}
    assert freeform(sandbox).status_code == 429  # one limit for every send
    assert call(sandbox, "GET", "/user/me").status_code == 200  # reads are not limited
    assert len(sandbox.ledger) == 5  # a 429 bills nothing
    assert [r.status for r in sandbox.requests if r.method == "POST"] == [200] * 5 + [429, 429]

    time.sleep(max(0.0, first_send + 1.05 - time.monotonic()))  # the window rolls on
    refused = send(sandbox, recipient_phone=OTHER)  # the 429 did not use up the recipient's fault
    assert (refused.status_code, refused.json()["error_code"]) == (402, "INSUFFICIENT_BALANCE")
    assert send(sandbox, recipient_phone=OTHER).status_code == 200
    assert len(sandbox.ledger) == 6


def test_send_rate_limit_counts_refused_sends_and_validation_errors() -> None:
    with FamulorSandbox(send_rate_limit=2) as sb:
        assert send(sb, template_id=1204).status_code == 422  # TEMPLATE_NOT_APPROVED
        assert call(sb, "POST", "/user/whatsapp/send", json={}).status_code == 422  # validation
        limited = send(sb, sender_id="not validated before the throttle")
        assert limited.status_code == 429
        assert sb.ledger == []


def test_a_fractional_send_rate_limit_spreads_the_window() -> None:
    with FamulorSandbox(send_rate_limit=0.5) as sb:  # one send per 2 s
        assert send(sb).status_code == 200
        limited = send(sb)
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "2")
        assert limited.json()["retry_after"] == 2


@pytest.mark.parametrize("limit", [None, 0])
def test_send_rate_limit_off(limit: float | None) -> None:
    with FamulorSandbox(send_rate_limit=limit) as sb:
        assert sb.send_rate_limit is None
        assert {send(sb, recipient_phone=f"+4915100000{i:02d}").status_code for i in range(15)} == {200}
        assert len(sb.ledger) == 15


def test_send_rate_limit_can_change_while_running(sandbox: FamulorSandbox) -> None:
    sandbox.send_rate_limit = None
    assert {send(sandbox).status_code for _ in range(8)} == {200}
    sandbox.send_rate_limit = 1  # sends made while it was off do not count
    assert [send(sandbox).status_code for _ in range(2)] == [200, 429]


def test_send_rate_limit_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="send_rate_limit"):
        FamulorSandbox(send_rate_limit=-1)


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
    sandbox.inject("status", path="/user/whatsapp/senders", times=2, status=503)
    assert call(sandbox, "GET", "/user/me").status_code == 200  # other paths unaffected
    assert call(sandbox, "GET", "/user/whatsapp/senders/12/templates").status_code == 200  # exact match
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
    sandbox.inject("drop", path="/user/whatsapp/send")
    with pytest.raises(requests.ConnectionError):
        send(sandbox)
    assert sandbox.ledger == []
    assert sandbox.requests[-1].status is None
    assert send(sandbox).status_code == 200


def test_accept_then_drop_bills_but_loses_the_response(sandbox: FamulorSandbox) -> None:
    sandbox.inject("accept_then_drop", path="/user/whatsapp/send")
    with pytest.raises(requests.ConnectionError):
        send(sandbox)
    assert [(e["message_id"], e["recipient_phone"]) for e in sandbox.ledger] == [(1001, PHONE)]
    assert send(sandbox).json()["message_id"] == 1002


def test_send_faults(sandbox: FamulorSandbox) -> None:
    sandbox.send_rate_limit = None
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
    with pytest.raises(ValueError, match="delay"):
        sandbox.inject("hang", delay=-1)
    for path in ("/api/user/me", "user/me", "/user/me?x=1", "/api"):
        with pytest.raises(ValueError, match="without the /api prefix"):
            sandbox.inject("drop", path=path)


def test_fault_path_is_an_exact_api_path(sandbox: FamulorSandbox) -> None:
    sandbox.open_session(12, PHONE)
    sandbox.inject("status", path="/user/whatsapp/send", status=500, times=2)
    sandbox.inject("html", path="/user/whatsapp/senders/12/templates/")  # a trailing "/" is ignored
    assert freeform(sandbox).status_code == 200  # /send-freeform is another path
    assert call(sandbox, "GET", "/user/whatsapp/senders").status_code == 200
    assert send(sandbox).status_code == 500
    assert call(sandbox, "POST", "/user/whatsapp/send/", json={}).status_code == 500  # same route
    templates = call(sandbox, "GET", "/user/whatsapp/senders/12/templates")
    assert templates.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("fault", "template_answer", "freeform_answer"),
    [
        ("invalid_phone", (422, "INVALID_PHONE"), (422, "INVALID_PHONE")),
        ("sender_offline", (422, "SENDER_OFFLINE"), (503, "SENDER_OFFLINE")),
        ("insufficient_balance", (402, "INSUFFICIENT_BALANCE"), (402, "INSUFFICIENT_BALANCE")),
    ],
)
def test_send_refusals_for_one_recipient(
    sandbox: FamulorSandbox, fault: str, template_answer: tuple[int, str], freeform_answer: tuple[int, str]
) -> None:
    sandbox.open_session(12, OTHER)
    sandbox.inject(fault, recipient_phone=OTHER, times=2)
    assert send(sandbox).status_code == 200  # another recipient
    refused = send(sandbox, recipient_phone=OTHER)
    assert (refused.status_code, refused.json()["error_code"]) == template_answer
    assert refused.json()["success"] is False
    refused = freeform(sandbox, recipient_phone=OTHER)
    assert (refused.status_code, refused.json()["error_code"]) == freeform_answer
    assert send(sandbox, recipient_phone=OTHER).status_code == 200  # used up
    assert [e["recipient_phone"] for e in sandbox.ledger] == [PHONE, OTHER]


@pytest.mark.parametrize("name", ["accept_then_drop", "lost_response"])
def test_lost_response_for_one_recipient(sandbox: FamulorSandbox, name: str) -> None:
    sandbox.inject(name, recipient_phone=OTHER)
    assert send(sandbox).status_code == 200
    with pytest.raises(requests.ConnectionError):
        send(sandbox, recipient_phone=OTHER)
    assert [e["recipient_phone"] for e in sandbox.ledger] == [PHONE, OTHER]  # billed all the same
    assert sandbox.requests[-1].status is None
    assert send(sandbox, recipient_phone=OTHER).json()["message_id"] == 1003


def test_hang_bills_then_answers_late_on_the_open_connection(sandbox: FamulorSandbox) -> None:
    sandbox.inject("hang", recipient_phone=OTHER, delay=0.5)
    assert send(sandbox).status_code == 200  # another recipient: no wait
    answers: list[requests.Response] = []
    started = time.monotonic()
    client = threading.Thread(target=lambda: answers.append(send(sandbox, recipient_phone=OTHER)))
    client.start()
    wait_for(lambda: len(sandbox.ledger) == 2)
    assert client.is_alive()  # billed, the answer still held back
    assert sandbox.requests[-1].status is None
    client.join(timeout=5)
    assert time.monotonic() - started >= 0.5
    assert (answers[0].status_code, answers[0].json()["message_id"]) == (200, 1002)
    assert sandbox.requests[-1].status == 200
    assert send(sandbox, recipient_phone=OTHER).status_code == 200  # used up


def test_hang_by_default_outlasts_the_client(sandbox: FamulorSandbox) -> None:
    sandbox.inject("hang", path="/user/whatsapp/send-freeform")
    sandbox.open_session(12, PHONE)
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            sandbox.base_url + "/user/whatsapp/send-freeform",
            json={"sender_id": 12, "recipient_phone": PHONE, "message": "hi"},
            headers=AUTH,
            timeout=0.3,
        )
    assert [e["kind"] for e in sandbox.ledger] == ["freeform"]


@pytest.mark.parametrize("fault", [{"fault": "hang"}, {"fault": "delay", "delay": 60}])
def test_stop_is_prompt_while_requests_are_held(fault: dict[str, Any]) -> None:
    sb = FamulorSandbox().start()
    port = sb.port
    sb.inject(**fault)
    outcome: list[BaseException | requests.Response] = []

    def client() -> None:
        try:
            outcome.append(send(sb))  # timeout=5: long enough to see the connection close
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    wait_for(lambda: len(sb.requests) == 1)
    time.sleep(0.1)  # let the handler reach its wait
    started = time.monotonic()
    sb.stop()
    assert time.monotonic() - started < 1
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert isinstance(outcome[0], requests.ConnectionError)  # closed without an answer
    assert not is_listening(port)


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


def test_control_api_injects_recipient_faults_and_hangs(sandbox: FamulorSandbox) -> None:
    control = sandbox.base_url.removesuffix("/api") + "/_sandbox"
    faults = [
        {"fault": "invalid_phone", "recipient_phone": OTHER, "path": "/user/whatsapp/send"},
        {"fault": "hang", "recipient_phone": PHONE, "delay": 0.3},
        {"fault": "lost_response", "recipient_phone": "+4915122222222"},
    ]
    for fault in faults:
        assert requests.post(f"{control}/faults", json=fault, timeout=5).json() == {"ok": True}
    assert send(sandbox, recipient_phone=OTHER).json()["error_code"] == "INVALID_PHONE"
    started = time.monotonic()
    assert send(sandbox).status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(requests.ConnectionError):
        send(sandbox, recipient_phone="+4915122222222")
    bad = requests.post(f"{control}/faults", json={"fault": "drop", "path": "/api/user/me"}, timeout=5)
    assert bad.status_code == 400
    assert "/api prefix" in bad.json()["message"]


def test_control_ledger_and_requests_pages(sandbox: FamulorSandbox) -> None:
    control = sandbox.base_url.removesuffix("/api") + "/_sandbox"
    for i in range(3):
        send(sandbox, recipient_phone=f"+491510000000{i}")
    everything = requests.get(f"{control}/ledger", timeout=5).json()
    assert everything == {"data": sandbox.ledger, "total": 3, "next_since": 3}
    page = requests.get(f"{control}/ledger", params={"since": 1, "limit": 1}, timeout=5).json()
    assert ([e["message_id"] for e in page["data"]], page["total"], page["next_since"]) == ([1002], 3, 2)
    rest = requests.get(f"{control}/ledger", params={"since": 2}, timeout=5).json()
    assert ([e["message_id"] for e in rest["data"]], rest["next_since"]) == ([1003], 3)
    beyond = requests.get(f"{control}/ledger", params={"since": 10}, timeout=5).json()
    assert beyond == {"data": [], "total": 3, "next_since": 3}
    recorded = requests.get(f"{control}/requests", params={"since": 2}, timeout=5).json()
    assert [(r["method"], r["status"]) for r in recorded["data"]] == [("POST", 200)]
    assert (recorded["total"], recorded["next_since"]) == (3, 3)
    assert set(recorded["data"][0]) == {"method", "path", "query", "monotonic", "wall_time", "status"}
    for params in ({"since": "x"}, {"since": -1}, {"limit": -1}):
        assert requests.get(f"{control}/ledger", params=params, timeout=5).status_code == 400


def test_control_ledger_stays_fast_with_100k_entries(sandbox: FamulorSandbox) -> None:
    control = sandbox.base_url.removesuffix("/api") + "/_sandbox"
    send(sandbox)
    (entry,) = sandbox.ledger
    with sandbox._lock:  # 100,000 real sends would take minutes
        for i in range(1, 100_000):
            sandbox._record_message({**entry, "message_id": 1001 + i})
    started = time.monotonic()
    tail = requests.get(f"{control}/ledger", params={"since": 99_990}, timeout=5).json()
    paged = time.monotonic() - started
    assert [e["message_id"] for e in tail["data"]] == list(range(100_991, 101_001))
    assert tail["next_since"] == 100_000
    started = time.monotonic()
    response = requests.get(f"{control}/ledger", timeout=30)
    full = time.monotonic() - started
    assert response.content.count(b'"message_id": ') == 100_000
    assert response.content.endswith(b'], "total": 100000, "next_since": 100000}')
    assert paged < 0.5  # about 10 ms on a laptop
    assert full < 10  # about 0.3 s; the old deep copy took 4 s


# CLI


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    args = ("--api-key", "cli-key", "--sender-online-after", "31=0.3")
    with serve(tmp_path, *args) as (proc, port):
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
        body = {"sender_id": 12, "template_id": 1201, "recipient_phone": PHONE}
        sends = [
            requests.post(f"{base_url}/user/whatsapp/send", json=body, headers=headers, timeout=5)
            for _ in range(6)
        ]
        assert [r.status_code for r in sends] == [200] * 5 + [429]  # the API's limit, by default
        out = stop(proc)
        assert f"listening on {base_url} (send rate limit: 5 sends/s per account)" in out
        assert not is_listening(port)


def test_cli_send_rate_limit_option(tmp_path: Path) -> None:
    with serve(tmp_path, "--send-rate-limit", "0") as (proc, port):
        url = f"http://127.0.0.1:{port}/api/user/whatsapp/send"
        body = {"sender_id": 12, "template_id": 1201, "recipient_phone": PHONE}
        codes = {requests.post(url, json=body, headers=AUTH, timeout=5).status_code for _ in range(10)}
        assert codes == {200}
        assert "(send rate limit: off)" in stop(proc)


@pytest.mark.parametrize("value", ["-1", "fast", "inf"])
def test_cli_refuses_a_bad_send_rate_limit(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "famulor_provider.testing", "serve", "--send-rate-limit", value],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--send-rate-limit" in result.stderr


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


def test_fixture_limits_sends_as_the_api(famulor_sandbox: FamulorSandbox) -> None:
    assert famulor_sandbox.send_rate_limit == 5
    codes = [send(famulor_sandbox, recipient_phone=f"+4915100000{i:02d}").status_code for i in range(6)]
    assert codes == [200] * 5 + [429]


@pytest.mark.famulor_sandbox(send_rate_limit=None, api_key="marked-key")
def test_fixture_marker_configures_the_sandbox(famulor_sandbox: FamulorSandbox) -> None:
    assert famulor_sandbox.send_rate_limit is None
    headers = {"Authorization": "Bearer marked-key"}
    body = {"sender_id": 12, "template_id": 1201, "recipient_phone": PHONE}
    sends = [
        call(famulor_sandbox, "POST", "/user/whatsapp/send", json=body, headers=headers) for _ in range(10)
    ]
    assert {r.status_code for r in sends} == {200}


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


def test_fixture_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.famulor_sandbox(send_rate_limit=0.5)
        def test_marked(famulor_sandbox):
            assert famulor_sandbox.send_rate_limit == 0.5

        @pytest.mark.famulor_sandbox(2)
        def test_positional(famulor_sandbox):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*keyword arguments only*"])


def test_seed_data_is_exported() -> None:
    assert [s["id"] for s in SEED_SENDERS] == [12, 15, 21, 27, 31, 33]
