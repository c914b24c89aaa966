"""Faults the sandbox injects on request (``FamulorSandbox.inject``) and how it answers them."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from famulor_provider.testing.replies import Reply, api_path, json_reply
from famulor_provider.testing.state import SandboxState

if TYPE_CHECKING:
    from collections.abc import Iterable

FAULTS_BEFORE_ROUTING = frozenset({"status", "html", "invalid_json", "no_data", "delay", "drop"})
SEND_FAULTS = frozenset({"sender_offline", "insufficient_balance", "session_expired", "invalid_phone"})
FAULTS_AFTER_ACCEPT = frozenset({"accept_then_drop", "hang"})
FAULT_ALIASES = {"lost_response": "accept_then_drop"}
FAULTS = FAULTS_BEFORE_ROUTING | SEND_FAULTS | FAULTS_AFTER_ACCEPT | FAULT_ALIASES.keys()
HANG_SECONDS = 3600.0
"""How long a ``hang`` fault holds the answer when no ``delay`` is given (``stop()`` cuts it short)."""
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Famulor - Login</title></head>"
    b"<body><h1>Please log in</h1><form action='/login' method='post'></form></body></html>"
)


@dataclass
class Fault:
    """A misbehaviour to apply to the next ``times`` matching requests (see ``FamulorSandbox.inject``)."""

    fault: str
    path: str | None = None
    times: int = 1
    status: int | None = None
    retry_after: int | float | str | None = None
    body: Any = None
    delay: float | None = None
    recipient_phone: str | None = None


class FaultsMixin(SandboxState):
    """``inject`` and ``clear_faults``, and how a request takes up a pending fault."""

    def inject(
        self,
        fault: str,
        *,
        path: str | None = None,
        times: int = 1,
        status: int | None = None,
        retry_after: int | float | str | None = None,
        body: Any = None,
        delay: float | None = None,
        recipient_phone: str | None = None,
    ) -> None:
        """
        Misbehave on the next ``times`` matching requests; the first matching fault, in order, applies.

        Faults before routing and auth: ``status`` (answer ``status`` with ``body``; 429 adds
        ``Retry-After`` when ``retry_after`` is given), ``html``, ``invalid_json``, ``no_data``
        (``{"items": []}``), ``delay`` (answer normally after ``delay`` seconds), ``drop`` (close
        without answering: nothing was sent).

        On sends only, after auth and the rate limit, refusals (nothing is billed):
        ``sender_offline`` (422 on ``/send``, 503 on ``/send-freeform``), ``insufficient_balance``
        (402), ``invalid_phone`` (422 ``INVALID_PHONE``), ``session_expired`` (403, free-form only).
        And once the message is accepted and billed: ``accept_then_drop`` (alias ``lost_response``:
        the connection closes without an answer) and ``hang`` (the answer is held ``delay`` seconds,
        default ``HANG_SECONDS``, on the open connection, then sent).

        ``delay`` on any other fault waits that long first. A request held by ``delay`` or ``hang``
        closes without an answer when the sandbox stops.

        :param fault: one of ``FAULTS``.
        :param path: only requests to this exact API path, as documented, without the ``/api``
            prefix and without a query, e.g. ``/user/whatsapp/send`` (which does not match
            ``/user/whatsapp/send-freeform``) or ``/user/whatsapp/senders/12/templates``
            (default: any path).
        :param times: how many matching requests it applies to.
        :param status: the HTTP status of a ``status`` fault.
        :param retry_after: the ``Retry-After`` header of a ``status`` fault.
        :param body: the body of a ``status`` fault: JSON, or a string sent as text.
        :param delay: seconds to wait (``delay``), or to hold the answer (``hang``).
        :param recipient_phone: only requests for this recipient (the ``recipient_phone`` of the
            JSON body or of the query, or a listing's ``customer_phone`` filter, compared exactly;
            default: any).
        """
        fault = FAULT_ALIASES.get(fault, fault)
        if fault not in FAULTS:
            raise ValueError(f"Unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        if fault == "status" and status is None:
            raise ValueError("The 'status' fault needs status=<HTTP status>")
        if fault == "delay" and delay is None:
            raise ValueError("The 'delay' fault needs delay=<seconds>")
        if delay is not None and not delay >= 0:
            raise ValueError(f"delay must be at least 0 seconds, not {delay!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        if path is not None:
            if not path.startswith("/") or "?" in path or path == "/api" or path.startswith("/api/"):
                raise ValueError(
                    f"path must be an API path without the /api prefix or a query, e.g. "
                    f"'/user/whatsapp/send', not {path!r}"
                )
            path = api_path(path)
        if fault == "hang" and delay is None:
            delay = HANG_SECONDS
        new = Fault(fault, path, times, status, retry_after, body, delay, recipient_phone)
        with self._lock:
            self._faults.append(new)

    def clear_faults(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, kinds: Iterable[str], api_path: str, phone: Any) -> Fault | None:
        """Use up once the first pending fault of ``kinds`` for this API path and recipient."""
        with self._lock:
            for fault in self._faults:
                if (
                    fault.fault in kinds
                    and (fault.path is None or fault.path == api_path)
                    and (fault.recipient_phone is None or fault.recipient_phone == phone)
                ):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _wait(self, seconds: float | None) -> bool:
        """Hold the calling request (never under the lock); ``False`` when the sandbox stops meanwhile."""
        if not seconds:
            return True
        return not self._stopping.wait(seconds)

    @staticmethod
    def _fault_reply(fault: Fault) -> Reply | None:
        if fault.fault == "drop":
            return None
        if fault.fault == "html":
            return Reply(200, HTML_PAGE, "text/html; charset=UTF-8")
        if fault.fault == "invalid_json":
            return Reply(200, b'{"data": [{"id": 12, "phone_number": "+1415')
        if fault.fault == "no_data":
            return json_reply(200, {"items": []})
        assert fault.status is not None  # inject() requires it for "status"
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        body = fault.body
        if body is None and fault.status == 429:
            seconds = fault.retry_after if isinstance(fault.retry_after, (int, float)) else 60
            body = {"message": "Too Many Attempts.", "retry_after": seconds}
        elif body is None:
            try:
                body = {"message": HTTPStatus(fault.status).phrase}
            except ValueError:  # a made-up status such as 599
                body = {"message": "Error"}
        if isinstance(body, str):
            return Reply(fault.status, body.encode(), "text/plain; charset=UTF-8", headers)
        return json_reply(fault.status, body, headers)
