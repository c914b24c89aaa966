"""FamulorHook against misbehaving servers over real loopback sockets (no transport mocks).

Deadlines: a dripping answer ends every attempt at the connection's ``timeout``; a read is
retried, a send is never retried and its outcome is unknown. "Never sent": only failures
that prove the request was not written (refused, TLS handshake or certificate) are retried
for a send; a TLS error after the request went out is "may have been sent".
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest
from loopback_servers import (
    DEADLINE,
    SEND_ARGS,
    DripServer,
    RedirectServer,
    TlsServer,
    both_paths,
    call_hook,
    refused_url,
)

from famulor_provider.exceptions import (
    FamulorAPIError,
    FamulorConnectionError,
    FamulorDeliveryUnknownError,
    FamulorError,
    FamulorTimeoutError,
)
from famulor_provider.hooks.famulor import FamulorHook

# The servers' certificates are self-signed: verify_ssl is off on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
    pytest.mark.usefixtures("no_waits"),
]

SLACK = 4.0  # loose upper bound on top of the deadlines


def request_sent(error: BaseException) -> bool | None:
    """The ``request_sent`` of an error, or of its cause (a delivery-unknown error wraps it)."""
    return getattr(error, "request_sent", getattr(error.__cause__, "request_sent", None))


# -- deadlines ---------------------------------------------------------------------------------


@both_paths
@pytest.mark.parametrize(
    ("server_options", "max_retries"),
    [({}, 0), ({}, 1), ({"tls": True}, 0), ({"head_at_once": True}, 0)],
    ids=["plain", "plain-retried", "tls", "body-only-drip"],
)
def test_dripping_read_times_out_at_the_deadline_and_is_retried(
    hook_for: Callable[..., FamulorHook], asynchronous: bool, server_options: dict, max_retries: int
) -> None:
    with DripServer(interval=1.0, **server_options) as server:
        hook = hook_for(server.url, max_retries=max_retries)
        started = time.monotonic()

        with pytest.raises(FamulorTimeoutError) as caught:
            call_hook(hook, "list_whatsapp_senders", asynchronous)

        elapsed = time.monotonic() - started
        attempts = max_retries + 1
        assert attempts * DEADLINE * 0.75 <= elapsed < attempts * DEADLINE + SLACK
        assert isinstance(caught.value, FamulorConnectionError)
        assert server.methods() == ["GET"] * attempts


@both_paths
def test_dripping_send_is_delivery_unknown_and_never_retried(
    hook_for: Callable[..., FamulorHook], asynchronous: bool
) -> None:
    with DripServer(interval=1.0) as server:
        hook = hook_for(server.url, max_retries=3)
        started = time.monotonic()

        with pytest.raises(FamulorDeliveryUnknownError) as caught:
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

        assert time.monotonic() - started < DEADLINE + SLACK
        assert server.methods() == ["POST"]
        assert json.loads(server.requests[0].body) == {
            "sender_id": 12,
            "template_id": 1201,
            "recipient_phone": "+14155550101",
        }
        assert caught.value.sender_id == 12
        assert caught.value.recipient_phone == "+14155550101"


# -- TLS: written or not -----------------------------------------------------------------------


@both_paths
def test_tls_error_after_the_request_makes_a_send_delivery_unknown(
    hook_for: Callable[..., FamulorHook], asynchronous: bool
) -> None:
    with TlsServer("garbage_after_request") as server:
        hook = hook_for(server.url, max_retries=3)

        with pytest.raises(FamulorError) as caught:
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

        assert server.methods() == ["POST"]  # one billed POST, not max_retries + 1
        assert isinstance(caught.value, FamulorDeliveryUnknownError)
        assert request_sent(caught.value) is True


@both_paths
def test_tls_error_after_the_request_makes_a_read_retried_as_sent(
    hook_for: Callable[..., FamulorHook], asynchronous: bool
) -> None:
    with TlsServer("garbage_after_request") as server:
        hook = hook_for(server.url, max_retries=2)

        with pytest.raises(FamulorConnectionError) as caught:
            call_hook(hook, "list_whatsapp_senders", asynchronous)

        assert server.methods() == ["GET"] * 3
        assert caught.value.request_sent is True


@both_paths
@pytest.mark.parametrize("fault", ["bad_handshake", "untrusted_certificate"])
def test_tls_handshake_failure_is_never_sent_and_a_send_is_retried(
    hook_for: Callable[..., FamulorHook], asynchronous: bool, fault: str
) -> None:
    mode = "bad_handshake" if fault == "bad_handshake" else "garbage_after_request"
    with TlsServer(mode) as server:
        hook = hook_for(server.url, max_retries=2, verify_ssl=fault == "untrusted_certificate")

        with pytest.raises(FamulorConnectionError) as caught:
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

        assert not isinstance(caught.value, FamulorDeliveryUnknownError)
        assert caught.value.request_sent is False
        assert server.requests == []
        assert server.handshakes == 0
        assert server.connections == 3  # retried: nothing can have been sent


@both_paths
def test_connection_refused_is_never_sent(hook_for: Callable[..., FamulorHook], asynchronous: bool) -> None:
    url, closed_port = refused_url()
    with closed_port:
        hook = hook_for(url, max_retries=1)

        with pytest.raises(FamulorConnectionError) as caught:
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

    assert not isinstance(caught.value, FamulorDeliveryUnknownError)
    assert caught.value.request_sent is False


def test_refused_url_really_refuses() -> None:
    url, closed_port = refused_url()
    with closed_port, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port.getsockname()[1]), timeout=2)
    assert url.startswith("http://127.0.0.1:")


# -- redirects ---------------------------------------------------------------------------------


@both_paths
def test_redirect_answering_a_send_is_delivery_unknown_and_never_retried(
    hook_for: Callable[..., FamulorHook], asynchronous: bool
) -> None:
    # Whatever answered 303 may have processed the POST: not a refusal, so no retry and no
    # "nothing was sent" for a campaign (which would send it again on its next try).
    with RedirectServer() as server:
        hook = hook_for(server.url, max_retries=3)

        with pytest.raises(FamulorDeliveryUnknownError) as caught:
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

        assert server.methods() == ["POST"]
        assert server.requests[0].path == "/api/user/whatsapp/send"
        assert caught.value.status_code == 303
        assert "redirected (HTTP 303)" in str(caught.value)


@both_paths
def test_redirect_answering_a_read_is_an_api_error_not_followed(
    hook_for: Callable[..., FamulorHook], asynchronous: bool
) -> None:
    with RedirectServer() as server:
        hook = hook_for(server.url, max_retries=2)

        with pytest.raises(FamulorAPIError, match=r"redirected \(HTTP 303\)") as caught:
            call_hook(hook, "list_whatsapp_senders", asynchronous)

        assert caught.value.status_code == 303
        assert server.methods() == ["GET"]  # neither followed nor retried
