"""FamulorHook: connection settings, the HTTP fault matrix, retries and secrecy (requests-mock)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from typing import Any

import httpx
import pytest
import requests
import requests_mock
from famulor_fixtures import BASE, KEY, set_conn
from famulor_fixtures import ONLINE_GREEN as SENDERS

from famulor_provider import __version__
from famulor_provider.exceptions import (
    FamulorAPIError,
    FamulorAuthError,
    FamulorConnectionError,
    FamulorError,
    FamulorRateLimitError,
    FamulorResponseError,
    FamulorTimeoutError,
    FamulorValidationError,
)
from famulor_provider.hooks.famulor import FamulorHook
from famulor_provider.transport import MAX_RETRY_AFTER

SENDERS_URL = f"{BASE}/user/whatsapp/senders"


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> FamulorHook:
    set_conn(monkeypatch)
    return FamulorHook()


# -- connection ------------------------------------------------------------------------------------


def test_init_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    hook = FamulorHook("nope", timeout=3, max_retries=1)  # an unknown conn id only fails on use
    assert (hook.famulor_conn_id, hook.timeout, hook.max_retries) == ("nope", 3, 1)
    with pytest.raises(Exception, match="nope"):
        hook.config  # noqa: B018


def test_class_attributes() -> None:
    assert FamulorHook.conn_type == "famulor"
    assert FamulorHook.conn_name_attr == "famulor_conn_id"
    assert FamulorHook.default_conn_name == "famulor_default"
    assert FamulorHook.hook_name == "Famulor"


def test_defaults_from_json_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)
    config = FamulorHook().config
    assert config.base_url == BASE
    assert (config.connect_timeout, config.deadline) == (10.0, 30.0)
    assert config.max_retries == 5
    assert config.verify_ssl is True
    assert KEY not in repr(config)


def test_uri_connection_with_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAMULOR_WL",
        f"famulor://:{KEY}@call.aiployees.com/api?timeout=7.5&max_retries=2&verify_ssl=false",
    )
    config = FamulorHook("famulor_wl").config
    assert config.base_url == "https://call.aiployees.com/api"
    assert (config.connect_timeout, config.deadline) == (7.5, 7.5)
    assert config.max_retries == 2
    assert config.verify_ssl is False
    with requests_mock.Mocker() as m:
        m.get("https://call.aiployees.com/api/user/whatsapp/senders", json={"data": []})
        FamulorHook("famulor_wl").list_whatsapp_senders()
    assert m.request_history[0].verify is False


def test_hook_arguments_override_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, extra={"timeout": 5, "max_retries": 4})
    config = FamulorHook(timeout=12, max_retries=0).config
    assert (config.connect_timeout, config.deadline) == (10.0, 12.0)
    assert config.max_retries == 0


def test_white_label_host_is_used(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    set_conn(monkeypatch, host="https://call.aiployees.com/api/")
    with requests_mock.Mocker() as m:
        m.get("https://call.aiployees.com/api/user/whatsapp/senders", json={"data": SENDERS})
        assert [s.id for s in FamulorHook().list_whatsapp_senders()] == [12, 15]


def test_missing_api_key_fails_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_DEFAULT", json.dumps({"conn_type": "famulor"}))
    with requests_mock.Mocker() as m, pytest.raises(FamulorValidationError, match="API key") as err:
        FamulorHook().list_whatsapp_senders()
    assert m.call_count == 0
    assert "famulor_default" in str(err.value)


@pytest.mark.parametrize("host", ["http://app.famulor.de/api", "http://10.0.0.5/api"])
def test_plain_http_refused_off_loopback(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    set_conn(monkeypatch, host=host)
    with requests_mock.Mocker() as m, pytest.raises(FamulorValidationError, match="https"):
        FamulorHook().list_whatsapp_senders()
    assert m.call_count == 0


@pytest.mark.parametrize(
    "host", ["http://127.0.0.1:8080/api", "http://localhost:9/api", "http://[::1]:9/api"]
)
def test_plain_http_allowed_on_loopback(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    set_conn(monkeypatch, host=host)
    assert FamulorHook().config.base_url == host


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"timeout": "soon"}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"verify_ssl": "maybe"}, "verify_ssl"),
    ],
)
def test_bad_extras_are_named(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], field: str) -> None:
    set_conn(monkeypatch, extra=extra)
    with pytest.raises(FamulorValidationError) as err:
        FamulorHook().config  # noqa: B018
    assert err.value.field == field


@pytest.mark.parametrize(("value", "expected"), [("y", True), ("n", False), ("TRUE", True), (0, False)])
def test_verify_ssl_spellings(monkeypatch: pytest.MonkeyPatch, value: Any, expected: bool) -> None:
    set_conn(monkeypatch, extra={"verify_ssl": value})  # "y": what Airflow 2.11's Test button sends
    assert FamulorHook().config.verify_ssl is expected


def test_form_prefixed_extras_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, extra={"extra__famulor__timeout": "9", "extra__famulor__verify_ssl": False})
    config = FamulorHook().config
    assert (config.deadline, config.verify_ssl) == (9.0, False)


# -- requests --------------------------------------------------------------------------------------


def test_list_senders_request_and_model(hook: FamulorHook) -> None:
    item = {**SENDERS[0], "brand_new_field": {"x": 1}}
    with requests_mock.Mocker() as m:
        m.get(SENDERS_URL, json={"data": [item, SENDERS[1]]})
        senders = hook.list_whatsapp_senders()
    request = m.request_history[0]
    assert request.qs == {"status": ["online"]}
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == f"airflow-provider-famulor/{__version__}"
    assert request.timeout == (10.0, 30.0)
    assert request.verify not in (False, None)  # True, or the CA bundle the environment names
    assert [s.to_dict() for s in senders] == SENDERS


def test_a_netrc_login_never_replaces_the_bearer_header(
    hook: FamulorHook, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine app.famulor.de login someone password other-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with requests_mock.Mocker() as m:
        m.get(SENDERS_URL, json={"data": []})
        hook.list_whatsapp_senders()
    assert m.request_history[0].headers["Authorization"] == f"Bearer {KEY}"


def test_status_all_and_tolerated_values(hook: FamulorHook) -> None:
    odd = {
        "id": "33",
        "phone_number": "+4930123456",
        "display_name": None,
        "status": "connecting",
        "quality_rating": None,
        "messaging_limit": None,
        "messaging_limit_formatted": None,
    }
    weird = {**SENDERS[0], "id": 40, "status": "Suspended", "quality_rating": "NA"}
    with requests_mock.Mocker() as m:
        m.get(SENDERS_URL, json={"data": [odd, weird]})
        senders = hook.list_whatsapp_senders(status="all")
    assert m.request_history[0].qs == {"status": ["all"]}
    assert (senders[0].id, senders[0].status, senders[0].quality_rating) == (33, "connecting", None)
    assert (senders[1].status, senders[1].quality_rating) == ("Suspended", "NA")


def test_empty_account(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(SENDERS_URL, json={"data": []})
        assert hook.list_whatsapp_senders() == []


def test_session_is_reused(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(SENDERS_URL, json={"data": SENDERS})
        hook.list_whatsapp_senders()
        session = hook.session
        hook.list_whatsapp_senders()
        assert hook.session is session
        assert m.call_count == 2


# -- the fault matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error", "code", "text"),
    [
        (401, {"message": "Unauthenticated."}, FamulorAuthError, None, "invalid or expired"),
        (403, {"error": "Forbidden", "message": "No permission"}, FamulorAuthError, None, "lacks permission"),
        (
            404,
            {"success": False, "error": "Sender not found", "error_code": "SENDER_NOT_FOUND"},
            FamulorAPIError,
            "SENDER_NOT_FOUND",
            "Sender not found",
        ),
        (
            422,
            {
                "message": "The given data was invalid.",
                "errors": {"status": ["The selected status is invalid."]},
            },
            FamulorAPIError,
            None,
            "status: The selected status is invalid.",
        ),
        (400, {"status": False, "error": "Bad request"}, FamulorAPIError, None, "Bad request"),
    ],
)
def test_client_errors_fail_at_once(
    hook: FamulorHook,
    sleeps: list[float],
    status: int,
    body: dict[str, Any],
    error: type,
    code: str | None,
    text: str,
) -> None:
    with requests_mock.Mocker() as m, pytest.raises(error) as err:
        m.get(SENDERS_URL, status_code=status, json=body)
        hook.list_whatsapp_senders()
    assert m.call_count == 1
    assert sleeps == []
    assert err.value.status_code == status
    assert err.value.error_code == code
    message = str(err.value)
    assert f"GET /user/whatsapp/senders failed with HTTP {status}" in message
    assert text in message


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_server_errors_are_retried_then_succeed(hook: FamulorHook, sleeps: list[float], status: int) -> None:
    with requests_mock.Mocker() as m:
        m.get(
            SENDERS_URL,
            [
                {"status_code": status, "text": "<html>oops</html>"},
                {"status_code": status, "json": {"message": "busy"}},
                {"json": {"data": SENDERS}},
            ],
        )
        assert len(hook.list_whatsapp_senders()) == 2
    assert m.call_count == 3
    assert len(sleeps) == 2
    assert all(0 < s <= 30 for s in sleeps)


def test_retries_are_logged_and_numbered_from_the_first_failure(
    hook: FamulorHook, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    # The first try runs outside tenacity; its failure is replayed as tenacity's try 1.
    with requests_mock.Mocker() as m, caplog.at_level(logging.WARNING, logger="famulor_provider"):
        m.get(SENDERS_URL, [{"status_code": 503}, {"status_code": 502}, {"json": {"data": SENDERS}}])
        assert len(hook.list_whatsapp_senders()) == 2
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert [text.split("; ")[-1].split(" in ")[0] for text in retries] == ["retry 1", "retry 2"]
    assert "HTTP 503" in retries[0]
    assert "HTTP 502" in retries[1]
    assert m.call_count == 3
    assert len(sleeps) == 2
    assert 1 <= sleeps[0] <= 2 <= sleeps[1] <= 3


def test_server_error_left_after_retries(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    set_conn(monkeypatch, extra={"max_retries": 3})
    with requests_mock.Mocker() as m, pytest.raises(FamulorAPIError) as err:
        m.get(SENDERS_URL, status_code=503, text="<html>maintenance</html>")
        FamulorHook().list_whatsapp_senders()
    assert m.call_count == 4  # max_retries=3: at most 4 requests
    assert err.value.status_code == 503
    assert "no JSON error body" in str(err.value)
    assert "maintenance" not in str(err.value)


def test_backoff_grows(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    set_conn(monkeypatch, extra={"max_retries": 5})
    with requests_mock.Mocker() as m, pytest.raises(FamulorAPIError):
        m.get(SENDERS_URL, status_code=500)
        FamulorHook().list_whatsapp_senders()
    assert len(sleeps) == 5
    # exponential with up to 1 s of jitter: about 1, 2, 4, 8, 16
    for attempt, slept in enumerate(sleeps):
        assert 2**attempt <= slept <= 2**attempt + 1


def test_429_retry_after_seconds_is_honoured(hook: FamulorHook, sleeps: list[float]) -> None:
    with requests_mock.Mocker() as m:
        m.get(
            SENDERS_URL,
            [
                {
                    "status_code": 429,
                    "headers": {"Retry-After": "7"},
                    "json": {"message": "Too Many Attempts."},
                },
                {"json": {"data": SENDERS}},
            ],
        )
        hook.list_whatsapp_senders()
    assert sleeps == [7.0]


def test_429_retry_after_http_date(hook: FamulorHook, sleeps: list[float]) -> None:
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    with requests_mock.Mocker() as m:
        m.get(
            SENDERS_URL, [{"status_code": 429, "headers": {"Retry-After": when}}, {"json": {"data": SENDERS}}]
        )
        hook.list_whatsapp_senders()
    assert 17 <= sleeps[0] <= 20


def test_429_body_retry_after_and_cap(hook: FamulorHook, sleeps: list[float]) -> None:
    with requests_mock.Mocker() as m:
        m.get(
            SENDERS_URL,
            [
                {"status_code": 429, "json": {"message": "Too Many Attempts.", "retry_after": 3}},
                {"status_code": 429, "json": {"message": "Too Many Attempts.", "retry_after": 3600}},
                {"json": {"data": SENDERS}},
            ],
        )
        hook.list_whatsapp_senders()
    assert sleeps == [3.0, MAX_RETRY_AFTER]


def test_429_without_retry_after_backs_off(hook: FamulorHook, sleeps: list[float]) -> None:
    with requests_mock.Mocker() as m:
        m.get(SENDERS_URL, [{"status_code": 429}, {"json": {"data": SENDERS}}])
        hook.list_whatsapp_senders()
    assert 1 <= sleeps[0] <= 2


def test_429_left_after_retries(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    set_conn(monkeypatch, extra={"max_retries": 1})
    with requests_mock.Mocker() as m, pytest.raises(FamulorRateLimitError) as err:
        m.get(
            SENDERS_URL,
            status_code=429,
            headers={"Retry-After": "60"},
            json={"message": "Too Many Attempts.", "retry_after": 60},
        )
        FamulorHook().list_whatsapp_senders()
    assert m.call_count == 2
    assert err.value.retry_after == 60
    assert err.value.status_code == 429
    assert "retry after 60 s" in str(err.value)


@pytest.mark.parametrize(
    ("exc", "error", "sent"),
    [
        (requests.exceptions.ConnectionError("refused"), FamulorConnectionError, True),
        (requests.exceptions.ConnectTimeout("connect timeout"), FamulorTimeoutError, False),
        (requests.exceptions.ReadTimeout("read timeout"), FamulorTimeoutError, True),
    ],
)
def test_transport_errors_retried_then_typed(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], exc: Exception, error: type, sent: bool
) -> None:
    set_conn(monkeypatch, extra={"max_retries": 2})
    with requests_mock.Mocker() as m, pytest.raises(error) as err:
        m.get(SENDERS_URL, exc=exc)
        FamulorHook().list_whatsapp_senders()
    assert m.call_count == 3
    assert isinstance(err.value, FamulorError)
    assert err.value.request_sent is sent
    assert "GET /user/whatsapp/senders" in str(err.value)


def test_refused_connection_is_known_unsent(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    """A real refused connection on a closed loopback port: never reached the server."""
    set_conn(monkeypatch, host="http://127.0.0.1:9/api", extra={"max_retries": 1, "timeout": 2})
    with pytest.raises(FamulorConnectionError) as err:
        FamulorHook().list_whatsapp_senders()
    assert err.value.request_sent is False
    assert "could not connect" in str(err.value)


@pytest.mark.parametrize(
    ("response", "text"),
    [
        ({"text": "<!DOCTYPE html><html>login</html>", "headers": {"Content-Type": "text/html"}}, "HTML"),
        ({"text": '{"data": [', "headers": {"Content-Type": "application/json"}}, "not JSON"),
        ({"json": {"senders": []}}, "without a 'data' list"),
        ({"json": {"data": {"id": 1}}}, "without a 'data' list"),
        ({"json": {"data": [{"phone_number": "+1"}]}}, "without an 'id'"),
        ({"json": {"data": [{"id": 1, "messaging_limit": "lots"}]}}, "messaging_limit"),
    ],
)
def test_malformed_2xx(hook: FamulorHook, sleeps: list[float], response: dict[str, Any], text: str) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorResponseError, match=text):
        m.get(SENDERS_URL, **response)
        hook.list_whatsapp_senders()
    assert m.call_count == 1


def test_redirect_is_not_followed(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorAPIError, match="redirected"):
        m.get(SENDERS_URL, status_code=302, headers={"Location": "https://evil.example/login"})
        hook.list_whatsapp_senders()
    assert m.call_count == 1


# -- secrecy ---------------------------------------------------------------------------------------


def test_key_never_in_errors_or_logs(
    hook: FamulorHook, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"message": f"Token {KEY} is invalid", "errors": {"authorization": [f"Bearer {KEY}"]}}
    for status in (401, 422, 503):
        with requests_mock.Mocker() as m, pytest.raises(FamulorError) as err:
            m.get(SENDERS_URL, status_code=status, json=echo)
            hook.list_whatsapp_senders()
        assert KEY not in str(err.value)
        assert "***" in str(err.value)
    assert caplog.records  # the retries were logged
    assert KEY not in caplog.text


# -- test_connection -------------------------------------------------------------------------------


def test_test_connection_success_is_one_get(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(f"{BASE}/user/me", json={"name": "Acme", "email": "ops@acme.test", "total_balance": 12.5})
        assert hook.test_connection() == (True, f"Connected to Famulor at {BASE} as Acme")
    assert [r.method for r in m.request_history] == ["GET"]


@pytest.mark.parametrize(
    ("mock", "text"),
    [
        ({"status_code": 401, "json": {"message": "Unauthenticated."}}, "invalid or expired"),
        ({"exc": requests.exceptions.ConnectionError("unreachable")}, "GET /user/me to"),
        ({"status_code": 500}, "HTTP 500"),
    ],
)
def test_test_connection_failures(
    hook: FamulorHook, sleeps: list[float], mock: dict[str, Any], text: str
) -> None:
    with requests_mock.Mocker() as m:
        m.get(f"{BASE}/user/me", **mock)
        ok, message = hook.test_connection()
    assert ok is False
    assert text in message
    assert KEY not in message
    assert m.call_count == 1  # no retries: the UI is waiting
    assert sleeps == []


def test_test_connection_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_DEFAULT", json.dumps({"conn_type": "famulor"}))
    ok, message = FamulorHook().test_connection()
    assert ok is False
    assert "no API key" in message


# -- async (httpx): the same policy --------------------------------------------------------------


def run_async(
    monkeypatch: pytest.MonkeyPatch, responses: list[httpx.Response | Exception], status: str = "online"
) -> tuple[Any, list[httpx.Request], list[float]]:
    """Run ``alist_whatsapp_senders`` against scripted httpx responses."""
    seen: list[httpx.Request] = []
    slept: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    real_client = httpx.AsyncClient

    def client(**kwargs: Any) -> httpx.AsyncClient:
        return real_client(transport=httpx.MockTransport(handler), **kwargs)

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(httpx, "AsyncClient", client)
    monkeypatch.setattr(FamulorHook, "async_sleep", staticmethod(fake_sleep))
    try:
        result: Any = asyncio.run(FamulorHook().alist_whatsapp_senders(status))
    except FamulorError as err:
        result = err
    return result, seen, slept


def test_async_success_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)
    result, seen, _ = run_async(monkeypatch, [httpx.Response(200, json={"data": SENDERS})], "all")
    assert [s.to_dict() for s in result] == SENDERS
    assert str(seen[0].url) == f"{SENDERS_URL}?status=all"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert seen[0].headers["user-agent"] == f"airflow-provider-famulor/{__version__}"


def test_async_retries_like_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)
    responses: list[httpx.Response | Exception] = [
        httpx.Response(429, headers={"Retry-After": "4"}),
        httpx.ConnectError("refused"),
        httpx.Response(502),
        httpx.Response(200, json={"data": SENDERS}),
    ]
    result, seen, slept = run_async(monkeypatch, responses)
    assert len(result) == 2
    assert len(seen) == 4
    assert slept[0] == 4.0


def test_async_auth_error_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)
    result, seen, slept = run_async(monkeypatch, [httpx.Response(401, json={"message": f"bad {KEY}"})])
    assert isinstance(result, FamulorAuthError)
    assert KEY not in str(result)
    assert (len(seen), slept) == (1, [])


def test_async_timeouts_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, extra={"max_retries": 1})
    result, seen, _ = run_async(monkeypatch, [httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow")])
    assert isinstance(result, FamulorTimeoutError)
    assert result.request_sent is True
    assert len(seen) == 2


def test_async_html_is_a_response_error(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)
    html = httpx.Response(200, text="<html></html>", headers={"Content-Type": "text/html"})
    result, _, _ = run_async(monkeypatch, [html])
    assert isinstance(result, FamulorResponseError)


def test_async_requests_share_one_tls_context(monkeypatch: pytest.MonkeyPatch, famulor_sandbox: Any) -> None:
    """httpx would load the CA bundle (about 30 ms of CPU) for every client, and the async hook
    opens one per request: it hands httpx one context per process instead."""
    import ssl

    import httpx._transports.default as httpx_transports

    from famulor_provider.transport import httpx_verify

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    first = httpx_verify(True)
    assert isinstance(first, ssl.SSLContext)
    assert httpx_verify(True) is first
    monkeypatch.setenv("SSL_CERT_FILE", ssl.get_default_verify_paths().openssl_cafile)
    assert httpx_verify(True) is not first  # the CA settings are part of the key
    assert httpx_verify(False) is False
    monkeypatch.delenv("SSL_CERT_FILE")

    given: list[Any] = []
    real = httpx_transports.create_ssl_context
    monkeypatch.setattr(
        httpx_transports,
        "create_ssl_context",
        lambda *a, **kw: given.append(kw.get("verify")) or real(*a, **kw),
    )
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_DEFAULT", famulor_sandbox.connection_json())

    async def three_reads() -> None:
        hook = FamulorHook()
        for _ in range(3):
            await hook.alist_whatsapp_senders()

    asyncio.run(three_reads())
    assert len([r for r in famulor_sandbox.requests if r.path.endswith("/senders")]) == 3
    assert given and all(verify is first for verify in given)  # never True: no CA bundle loaded again
