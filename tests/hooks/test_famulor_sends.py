"""FamulorHook templates, session status and sends: the send fault matrix, error codes, validation, pacing."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import requests_mock
import urllib3
from famulor_fixtures import BASE, KEY, PHONE, set_conn

from famulor_provider.exceptions import (
    FamulorAPIError,
    FamulorAuthError,
    FamulorConnectionError,
    FamulorDeliveryUnknownError,
    FamulorError,
    FamulorInsufficientBalanceError,
    FamulorInvalidPhoneError,
    FamulorRateLimitError,
    FamulorSenderOfflineError,
    FamulorSessionExpiredError,
    FamulorTemplateError,
    FamulorValidationError,
)
from famulor_provider.hooks.famulor import FamulorHook
from famulor_provider.models import WhatsAppMessage, WhatsAppSessionStatus, WhatsAppTemplate
from famulor_provider.pacing import SEND_INTERVAL, SendPacer
from famulor_provider.privacy import mask_phone
from famulor_provider.testing import FamulorSandbox

SEND_URL = f"{BASE}/user/whatsapp/send"
FREEFORM_URL = f"{BASE}/user/whatsapp/send-freeform"
SESSION_URL = f"{BASE}/user/whatsapp/session-status"
TEMPLATES_URL = f"{BASE}/user/whatsapp/senders/12/templates"
ACCEPTED = {
    "success": True,
    "conversation_id": 501,
    "message_id": 1001,
    "whatsapp_message_id": 88412,
    "message_sid": "SM0123",
    "status": "queued",
}
TEMPLATE = {
    "id": 1201,
    "name": "order_update",
    "language": "en",
    "category": "UTILITY",
    "status": "approved",
    "body_text": "Hi, your order {{1}} is on its way.",
    "variables": ["1"],
    "has_variables": True,
}


class Clock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused() -> requests.exceptions.ConnectionError:
    """What requests raises when nothing listens on the port: no request went out."""
    reason = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", reason))  # type: ignore[arg-type]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fresh send pacer on a frozen clock, so no test inherits another's slots."""
    frozen = Clock()
    monkeypatch.setattr(FamulorHook, "send_pacer", SendPacer(SEND_INTERVAL, clock=frozen))
    return frozen


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, sleeps: list[float], clock: Clock) -> FamulorHook:
    set_conn(monkeypatch, extra={"max_retries": 3})
    return FamulorHook()


def send(hook: FamulorHook, endpoint: str) -> WhatsAppMessage:
    if endpoint == "send":
        return hook.send_whatsapp_template(12, 1201, PHONE, variables={"1": "A-1234"})
    return hook.send_whatsapp_freeform(12, PHONE, "Your parcel is at the door.")


URLS = {"send": SEND_URL, "send-freeform": FREEFORM_URL}


# -- templates and session status ------------------------------------------------------------------


def test_list_templates_request_and_model(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(TEMPLATES_URL, json={"data": [TEMPLATE, {**TEMPLATE, "id": 1202, "variables": []}]})
        templates = hook.list_whatsapp_templates(12)
    assert parse_qs(urlsplit(m.last_request.url).query) == {"status": ["approved"]}
    assert m.last_request.headers["Authorization"] == f"Bearer {KEY}"
    first = templates[0]
    assert isinstance(first, WhatsAppTemplate)
    assert (first.id, first.name, first.language, first.is_approved) == (1201, "order_update", "en", True)
    assert first.to_dict() == TEMPLATE
    assert json.loads(json.dumps(first.to_dict())) == TEMPLATE


def test_list_templates_all_and_sender_not_found(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(TEMPLATES_URL, json={"data": []})
        assert hook.list_whatsapp_templates("12", status="ALL") == []
        assert m.last_request.qs == {"status": ["all"]}
        body = {"success": False, "error": "Sender not found", "error_code": "SENDER_NOT_FOUND"}
        m.get(TEMPLATES_URL, status_code=404, json=body)
        with pytest.raises(FamulorAPIError) as err:
            hook.list_whatsapp_templates(12)
    assert (err.value.status_code, err.value.error_code) == (404, "SENDER_NOT_FOUND")
    assert m.call_count == 2  # a 404 is not retried


def test_list_templates_is_a_read_and_retries(hook: FamulorHook, sleeps: list[float]) -> None:
    with requests_mock.Mocker() as m:
        m.get(TEMPLATES_URL, [{"status_code": 503}, {"json": {"data": [TEMPLATE]}}])
        assert len(hook.list_whatsapp_templates(12)) == 1
    assert m.call_count == 2


def test_session_status_encodes_the_plus(hook: FamulorHook) -> None:
    answer = {
        "success": True,
        "has_conversation": True,
        "session_status": {
            "is_open": True,
            "can_send_freeform": True,
            "requires_template": False,
            "minutes_remaining": 812,
            "expires_at": "2026-11-26T09:12:00Z",
            "message": "Session is open.",
        },
    }
    with requests_mock.Mocker() as m:
        m.get(SESSION_URL, json=answer)
        status = hook.get_whatsapp_session_status(12, PHONE)
    assert "recipient_phone=%2B4915112345678" in m.last_request.url
    assert "sender_id=12" in m.last_request.url
    assert isinstance(status, WhatsAppSessionStatus)
    assert status.to_dict() == {
        "has_conversation": True,
        "is_open": True,
        "can_send_freeform": True,
        "requires_template": False,
        "minutes_remaining": 812,
        "expires_at": "2026-11-26T09:12:00Z",
        "expired_at": None,
        "message": "Session is open.",
    }


def test_session_status_expired(hook: FamulorHook) -> None:
    answer = {
        "success": True,
        "has_conversation": True,
        "session_status": {"is_open": False, "expired_at": "2026-11-20T08:00:00Z", "minutes_remaining": 0},
    }
    with requests_mock.Mocker() as m:
        m.get(SESSION_URL, json=answer)
        status = hook.get_whatsapp_session_status(12, PHONE)
    assert (status.is_open, status.can_send_freeform, status.requires_template) == (False, False, True)
    assert status.expired_at == "2026-11-20T08:00:00Z"


# -- sends: success ------------------------------------------------------------------------------


def test_send_template_body_and_message(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.post(SEND_URL, json=ACCEPTED)
        message = hook.send_whatsapp_template(
            12, 1201, "+49 151 1234-5678", variables={"1": "A-1234"}, recipient_name="Ann"
        )
    assert m.last_request.json() == {
        "sender_id": 12,
        "template_id": 1201,
        "recipient_phone": PHONE,
        "recipient_name": "Ann",
        "variables": {"1": "A-1234"},
    }
    assert m.last_request.headers["Content-Type"] == "application/json"
    assert message == WhatsAppMessage(
        sender_id=12,
        recipient_phone=PHONE,
        template_id=1201,
        message_id=1001,
        conversation_id=501,
        whatsapp_message_id=88412,
        message_sid="SM0123",
        status="queued",
    )
    assert json.loads(json.dumps(message.to_dict())) == message.to_dict()


def test_send_template_omits_empty_optionals(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.post(SEND_URL, json=ACCEPTED)
        hook.send_whatsapp_template("12", "1201", PHONE)
    assert m.last_request.json() == {"sender_id": 12, "template_id": 1201, "recipient_phone": PHONE}


def test_send_freeform_body(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.post(FREEFORM_URL, json=ACCEPTED)
        message = hook.send_whatsapp_freeform(12, PHONE, "x" * 4096)
    assert m.last_request.json() == {"sender_id": 12, "recipient_phone": PHONE, "message": "x" * 4096}
    assert message.template_id is None


# -- sends: the fault matrix ---------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["send", "send-freeform"])
def test_429_then_success_honours_retry_after(hook: FamulorHook, sleeps: list[float], endpoint: str) -> None:
    with requests_mock.Mocker() as m:
        m.post(
            URLS[endpoint],
            [
                {
                    "status_code": 429,
                    "headers": {"Retry-After": "2"},
                    "json": {"message": "Too Many Attempts."},
                },
                {"json": ACCEPTED},
            ],
        )
        message = send(hook, endpoint)
    assert m.call_count == 2
    assert message.message_id == 1001
    assert 2.0 in sleeps


@pytest.mark.parametrize(
    "exc",
    [refused(), requests.exceptions.ConnectTimeout("connect timeout")],
    ids=["refused", "connect-timeout"],
)
@pytest.mark.parametrize("endpoint", ["send", "send-freeform"])
def test_never_connected_is_retried(hook: FamulorHook, endpoint: str, exc: Exception) -> None:
    with requests_mock.Mocker() as m:
        m.post(URLS[endpoint], [{"exc": exc}, {"exc": exc}, {"json": ACCEPTED}])
        assert send(hook, endpoint).message_id == 1001
    assert m.call_count == 3


@pytest.mark.parametrize(
    ("response", "cause"),
    [
        ({"exc": requests.exceptions.ReadTimeout("read timeout")}, "no answer within"),
        ({"exc": requests.exceptions.ConnectionError("Connection aborted")}, "connection broke"),
        ({"exc": requests.exceptions.ChunkedEncodingError("Connection broken")}, "connection broke"),
        ({"status_code": 500, "text": "Server Error"}, "HTTP 500"),
        ({"status_code": 502, "json": {"message": "Bad Gateway"}}, "HTTP 502"),
        ({"status_code": 503, "json": {"success": False, "error_code": "UNKNOWN_ERROR"}}, "HTTP 503"),
        ({"status_code": 504}, "HTTP 504"),
        ({"status_code": 200, "text": "<html>ok</html>"}, "answered HTTP 200 with HTML"),
        ({"status_code": 200, "json": {"success": False}}, "without success"),
        ({"status_code": 200, "json": ["queued"]}, "without success"),
    ],
    ids=[
        "read-timeout",
        "dropped",
        "dropped-mid-body",
        "500",
        "502",
        "503-unknown-code",
        "504",
        "200-html",
        "200-unsuccessful",
        "200-list",
    ],
)
@pytest.mark.parametrize("endpoint", ["send", "send-freeform"])
def test_unknown_outcome_is_never_retried(
    hook: FamulorHook, endpoint: str, response: dict[str, Any], cause: str
) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorDeliveryUnknownError) as err:
        m.post(URLS[endpoint], [response, {"json": ACCEPTED}])
        send(hook, endpoint)
    assert m.call_count == 1  # exactly one request: a second could send the message twice
    text = str(err.value)
    assert "may have been sent" in text
    assert "sender 12" in text and mask_phone(PHONE) in text and "UTC" in text
    assert PHONE not in text  # the full number is on the error, not in its text (the task log)
    assert cause in text
    assert (err.value.sender_id, err.value.recipient_phone) == (12, PHONE)
    assert err.value.attempted_at.tzinfo is not None
    assert isinstance(err.value, FamulorError)


def test_unknown_after_a_429_keeps_one_accepted_attempt(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorDeliveryUnknownError):
        m.post(
            SEND_URL,
            [
                {"status_code": 429, "headers": {"Retry-After": "1"}},
                {"exc": requests.exceptions.ReadTimeout("read timeout")},
                {"json": ACCEPTED},
            ],
        )
        send(hook, "send")
    assert m.call_count == 2


def test_429_left_after_retries_is_a_rate_limit_error(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorRateLimitError) as err:
        m.post(SEND_URL, status_code=429, headers={"Retry-After": "1"})
        send(hook, "send")
    assert m.call_count == 4  # max_retries=3
    assert not isinstance(err.value, FamulorDeliveryUnknownError)


def test_refused_left_after_retries_is_known_unsent(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorConnectionError) as err:
        m.post(SEND_URL, exc=refused())
        send(hook, "send")
    assert m.call_count == 4
    assert err.value.request_sent is False
    assert not isinstance(err.value, FamulorDeliveryUnknownError)


# -- sends: error codes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "status", "code", "error"),
    [
        ("send", 402, "INSUFFICIENT_BALANCE", FamulorInsufficientBalanceError),
        ("send", 402, None, FamulorInsufficientBalanceError),
        ("send", 404, "SENDER_NOT_FOUND", FamulorAPIError),
        ("send", 404, "TEMPLATE_NOT_FOUND", FamulorTemplateError),
        ("send", 422, "SENDER_OFFLINE", FamulorSenderOfflineError),
        ("send", 422, "TEMPLATE_NOT_APPROVED", FamulorTemplateError),
        ("send", 422, "TEMPLATE_NOT_SYNCED", FamulorTemplateError),
        ("send", 422, "TEMPLATE_MISMATCH", FamulorTemplateError),
        ("send", 422, "INVALID_PHONE", FamulorInvalidPhoneError),
        ("send", 422, "NO_ASSISTANT_CONFIGURED", FamulorAPIError),
        ("send", 422, "MESSAGING_LIMIT_UNAVAILABLE", FamulorAPIError),
        ("send", 422, "TWILIO_ERROR_63016", FamulorAPIError),
        ("send", 422, "UNKNOWN_ERROR", FamulorAPIError),
        ("send", 401, None, FamulorAuthError),
        ("send-freeform", 402, "INSUFFICIENT_BALANCE", FamulorInsufficientBalanceError),
        ("send-freeform", 403, "SESSION_EXPIRED", FamulorSessionExpiredError),
        ("send-freeform", 403, None, FamulorAuthError),
        ("send-freeform", 404, "SENDER_NOT_FOUND", FamulorAPIError),
        ("send-freeform", 422, "INVALID_PHONE", FamulorInvalidPhoneError),
        ("send-freeform", 503, "SENDER_OFFLINE", FamulorSenderOfflineError),
    ],
)
def test_error_code_first_then_status(
    hook: FamulorHook, endpoint: str, status: int, code: str | None, error: type[FamulorAPIError]
) -> None:
    body: dict[str, Any] = {"success": False, "error": "Refused"}
    if code:
        body["error_code"] = code
    with requests_mock.Mocker() as m, pytest.raises(FamulorAPIError) as err:
        m.post(URLS[endpoint], [{"status_code": status, "json": body}, {"json": ACCEPTED}])
        send(hook, endpoint)
    assert type(err.value) is error
    assert (err.value.status_code, err.value.error_code) == (status, code)
    assert m.call_count == 1  # a refusal is never retried by the hook
    if code:
        assert code in str(err.value)
    if code == "SESSION_EXPIRED":
        assert "API key" not in str(err.value)  # a 403 with a code is not an auth problem


# -- validation before any request -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"recipient_phone": "4915112345678"}, "recipient_phone"),
        ({"recipient_phone": "+0151123456"}, "recipient_phone"),
        ({"recipient_phone": "+12345"}, "recipient_phone"),
        ({"recipient_phone": "+1234567890123456"}, "recipient_phone"),
        ({"recipient_phone": "+49 151 CALL-ME"}, "recipient_phone"),
        ({"recipient_phone": None}, "recipient_phone"),
        ({"recipient_phone": 4915112345678}, "recipient_phone"),
        ({"sender_id": 0}, "sender_id"),
        ({"sender_id": -12}, "sender_id"),
        ({"sender_id": True}, "sender_id"),
        ({"sender_id": "twelve"}, "sender_id"),
        ({"sender_id": 12.5}, "sender_id"),
        ({"sender_id": None}, "sender_id"),
        ({"template_id": 0}, "template_id"),
        ({"template_id": "1201x"}, "template_id"),
        ({"recipient_name": "x" * 256}, "recipient_name"),
        ({"recipient_name": 42}, "recipient_name"),
        ({"variables": ["A-1234"]}, "variables"),
        ({"variables": {"1": {"nested": 1}}}, "variables"),
    ],
)
def test_template_send_validation_before_any_request(
    hook: FamulorHook, call: dict[str, Any], field: str
) -> None:
    kwargs: dict[str, Any] = {"sender_id": 12, "template_id": 1201, "recipient_phone": PHONE, **call}
    with requests_mock.Mocker() as m, pytest.raises(FamulorValidationError) as err:
        m.post(SEND_URL, json=ACCEPTED)
        hook.send_whatsapp_template(
            kwargs.pop("sender_id"), kwargs.pop("template_id"), kwargs.pop("recipient_phone"), **kwargs
        )
    assert m.call_count == 0
    assert err.value.field == field
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"message": "x" * 4097}, "message"),
        ({"message": ""}, "message"),
        ({"message": None}, "message"),
        ({"recipient_phone": "+49"}, "recipient_phone"),
        ({"sender_id": 0}, "sender_id"),
    ],
)
def test_freeform_validation_before_any_request(hook: FamulorHook, call: dict[str, Any], field: str) -> None:
    kwargs: dict[str, Any] = {"sender_id": 12, "recipient_phone": PHONE, "message": "Hi", **call}
    with requests_mock.Mocker() as m, pytest.raises(FamulorValidationError) as err:
        m.post(FREEFORM_URL, json=ACCEPTED)
        hook.send_whatsapp_freeform(**kwargs)
    assert m.call_count == 0
    assert err.value.field == field


def test_read_validation_before_any_request(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        with pytest.raises(FamulorValidationError, match="sender_id"):
            hook.list_whatsapp_templates(0)
        with pytest.raises(FamulorValidationError, match="recipient_phone"):
            hook.get_whatsapp_session_status(12, "015112345678")
    assert m.call_count == 0


def test_boundaries_are_accepted(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.post(SEND_URL, json=ACCEPTED)
        hook.send_whatsapp_template(1, 1, "+1234567", recipient_name="n" * 255)
        hook.send_whatsapp_template(1, 1, "+123456789012345")
    assert m.call_count == 2


# -- secrecy -------------------------------------------------------------------------------------


def test_key_never_in_send_errors_or_logs(hook: FamulorHook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"message": f"Bearer {KEY} rejected", "error_code": "INVALID_PHONE"}
    with requests_mock.Mocker() as m:
        m.post(SEND_URL, status_code=422, json=echo)
        with pytest.raises(FamulorInvalidPhoneError) as refused_err:
            send(hook, "send")
        m.post(SEND_URL, status_code=500, json={"message": f"token {KEY} crashed us"})
        with pytest.raises(FamulorDeliveryUnknownError) as unknown_err:
            send(hook, "send")
    for err in (refused_err.value, unknown_err.value):
        assert KEY not in str(err)
        assert "***" in str(err)
    assert caplog.records
    assert KEY not in caplog.text


# -- pacing --------------------------------------------------------------------------------------


def test_pacer_spaces_one_key_and_not_others() -> None:
    clock = Clock()
    pacer = SendPacer(0.2, clock=clock)
    slept: list[float] = []
    for key in ("a", "a", "a", "b"):
        pacer.wait(key, slept.append)
    assert slept == pytest.approx([0.2, 0.4])  # "a" waits for its slots; "b" goes at once
    clock.now += 10  # long idle: no backlog is kept
    pacer.wait("a", slept.append)
    assert len(slept) == 2


def test_pacer_is_thread_safe() -> None:
    pacer = SendPacer(0.2, clock=Clock())
    slept: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    threads = [threading.Thread(target=pacer.wait, args=("famulor_default", record)) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every thread got its own slot: 39 distinct waits 0.2 s apart (the first did not wait).
    assert sorted(slept) == pytest.approx([0.2 * i for i in range(1, 40)])


def test_sends_share_the_process_pacer_per_connection(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], clock: Clock
) -> None:
    set_conn(monkeypatch)
    set_conn(monkeypatch, "famulor_other")
    with requests_mock.Mocker() as m:
        m.post(SEND_URL, json=ACCEPTED)
        FamulorHook().send_whatsapp_template(12, 1201, PHONE)
        FamulorHook().send_whatsapp_template(12, 1201, PHONE)  # another hook, same connection
        FamulorHook("famulor_other").send_whatsapp_template(12, 1201, PHONE)
    assert sleeps == pytest.approx([SEND_INTERVAL])
    assert SEND_INTERVAL >= 0.2  # never faster than the documented 5 sends/s


def test_reads_are_not_paced(hook: FamulorHook, sleeps: list[float]) -> None:
    with requests_mock.Mocker() as m:
        m.get(TEMPLATES_URL, json={"data": []})
        for _ in range(3):
            hook.list_whatsapp_templates(12)
    assert sleeps == []


# -- against the sandbox (real HTTP) -------------------------------------------------------------


@pytest.fixture
def sandbox_hook(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> FamulorHook:
    monkeypatch.setattr(FamulorHook, "send_pacer", SendPacer(SEND_INTERVAL))
    return FamulorHook()


def test_sandbox_session_status_plus_reaches_the_server(
    famulor_sandbox: Any, sandbox_hook: FamulorHook
) -> None:
    famulor_sandbox.open_session(12, PHONE, minutes=30)
    status = sandbox_hook.get_whatsapp_session_status(12, PHONE)
    assert (status.has_conversation, status.is_open, status.can_send_freeform) == (True, True, True)
    assert status.minutes_remaining in (29, 30)
    assert famulor_sandbox.requests[-1].query["recipient_phone"] == PHONE


def test_sandbox_lost_response_is_delivery_unknown_and_billed_once(
    famulor_sandbox: Any, sandbox_hook: FamulorHook
) -> None:
    famulor_sandbox.inject("accept_then_drop", path="/user/whatsapp/send", recipient_phone=PHONE)
    with pytest.raises(FamulorDeliveryUnknownError, match="may have been sent"):
        sandbox_hook.send_whatsapp_template(12, 1201, PHONE, variables={"1": "A-1"})
    assert [row["recipient_phone"] for row in famulor_sandbox.ledger] == [PHONE]
    assert len([r for r in famulor_sandbox.requests if r.method == "POST"]) == 1


def test_sandbox_templates_and_send_codes(famulor_sandbox: Any, sandbox_hook: FamulorHook) -> None:
    names = {(t.name, t.language, t.status) for t in sandbox_hook.list_whatsapp_templates(12, status="all")}
    assert ("order_update", "en", "approved") in names
    with pytest.raises(FamulorTemplateError):
        sandbox_hook.send_whatsapp_template(12, 1204, PHONE)  # spring_sale: pending
    famulor_sandbox.inject("sender_offline", path="/user/whatsapp/send-freeform")
    with pytest.raises(FamulorSenderOfflineError) as err:
        sandbox_hook.send_whatsapp_freeform(12, PHONE, "hi")
    assert err.value.status_code == 503
    with pytest.raises(FamulorSessionExpiredError):
        sandbox_hook.send_whatsapp_freeform(12, PHONE, "hi")
    assert famulor_sandbox.ledger == []


def test_sandbox_pacing_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """N sends from several threads and hooks: the server saw them at most 5 per second."""
    monkeypatch.setattr(FamulorHook, "send_pacer", SendPacer(SEND_INTERVAL))
    famulor_sandbox = FamulorSandbox(send_rate_limit=5).start()
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_DEFAULT", famulor_sandbox.env()["AIRFLOW_CONN_FAMULOR_DEFAULT"])
    try:
        _send_from_threads(famulor_sandbox)
    finally:
        famulor_sandbox.stop()
    assert [r.status for r in famulor_sandbox.requests] == [200] * 8  # the 5/s limit was never hit


def _send_from_threads(famulor_sandbox: Any) -> None:
    n = 8
    phones = [f"+1415555{1000 + i}" for i in range(n)]
    errors: list[BaseException] = []
    ready = threading.Barrier(n)

    def send_one(phone: str) -> None:
        hook = FamulorHook()
        hook.config  # noqa: B018  (load the connection first: the race is about the sends)
        ready.wait()
        try:
            hook.send_whatsapp_template(12, 1201, phone, variables={"1": phone})
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=send_one, args=(phone,)) for phone in phones]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    accepted = sorted(row["accepted_at"] for row in famulor_sandbox.ledger)
    assert len(accepted) == n
    assert accepted[-1] - accepted[0] >= (n - 1) / 5
    assert sorted(row["recipient_phone"] for row in famulor_sandbox.ledger) == sorted(phones)


@pytest.mark.parametrize("endpoint", ["send", "send-freeform"])
def test_info_lines_mask_the_phone_and_debug_has_it(
    hook: FamulorHook, endpoint: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS", raising=False)
    caplog.set_level(logging.DEBUG, logger="famulor_provider")
    with requests_mock.Mocker() as m:
        m.post(URLS[endpoint], json=ACCEPTED)
        send(hook, endpoint)
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(line.startswith("Sending WhatsApp") and mask_phone(PHONE) in line for line in info), info
    assert any("accepted" in line and mask_phone(PHONE) in line for line in info), info
    assert not [line for line in info if PHONE in line]
    assert any(PHONE in line for line in debug)


def test_the_switch_shows_full_numbers_at_info(
    hook: FamulorHook, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS", "true")
    caplog.set_level(logging.INFO, logger="famulor_provider")
    with requests_mock.Mocker() as m, pytest.raises(FamulorDeliveryUnknownError) as err:
        m.post(SEND_URL, status_code=502)
        send(hook, "send")
    assert f"to {PHONE}" in caplog.text
    assert f"messaged {PHONE} around" in str(err.value)
