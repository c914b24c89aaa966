"""A local HTTP server that imitates Famulor's Classic API, for DAGs and tests without an account."""

from __future__ import annotations

import copy
import hmac
import ipaddress
import json
import logging
import math
import re
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger(__name__)

SANDBOX_API_KEY = "sandbox-api-key"

SEED_SENDERS: list[dict[str, Any]] = [
    {"id": 12, "phone_number": "+14155551234", "display_name": "Acme Corp Support",
     "status": "online", "quality_rating": "GREEN", "messaging_limit": 10000},
    {"id": 15, "phone_number": "+442071234567", "display_name": "Acme Corp Sales",
     "status": "online", "quality_rating": "GREEN", "messaging_limit": None},
    {"id": 21, "phone_number": "+4930901820", "display_name": "Acme GmbH Berlin",
     "status": "online", "quality_rating": "YELLOW", "messaging_limit": 2000},
    {"id": 27, "phone_number": "+33142685300", "display_name": "Acme France",
     "status": "online", "quality_rating": "RED", "messaging_limit": 250},
    {"id": 31, "phone_number": "+61291234567", "display_name": "Acme Australia",
     "status": "offline", "quality_rating": "GREEN", "messaging_limit": 100000},
    # Dashboard-only states show up in lower case with status=all (inferred from the docs).
    {"id": 33, "phone_number": "+14155550199", "display_name": "Acme Corp Onboarding",
     "status": "connecting", "quality_rating": None, "messaging_limit": 250},
]  # fmt: skip


def default_templates(sender_id: int) -> list[dict[str, Any]]:
    """The seed templates of one sender; ids are ``sender_id * 100 + n``.

    :param sender_id: the sender the templates belong to.
    """
    rows = [
        ("order_update", "en", "UTILITY", "approved", "Hi, your order {{1}} is on its way.", ["1"]),
        ("welcome", "en", "MARKETING", "approved", "Welcome to Acme! Reply to this message to chat.", []),
        ("welcome", "de", "MARKETING", "approved", "Willkommen bei Acme! Antworten Sie uns hier.", []),
        ("spring_sale", "en", "MARKETING", "pending", "Spring sale: {{1}} off until {{2}}.", ["1", "2"]),
        ("payment_reminder", "en", "UTILITY", "rejected", "Pay now or else.", []),
    ]
    return [
        {"id": sender_id * 100 + n, "name": name, "language": language, "category": category,
         "status": status, "body_text": body_text, "variables": variables,
         "has_variables": bool(variables)}
        for n, (name, language, category, status, body_text, variables) in enumerate(rows, start=1)
    ]  # fmt: skip


SEED_TEMPLATES: dict[int, list[dict[str, Any]]] = {s["id"]: default_templates(s["id"]) for s in SEED_SENDERS}

FAULTS_BEFORE_ROUTING = frozenset({"status", "html", "invalid_json", "no_data", "delay", "drop"})
SEND_FAULTS = frozenset({"sender_offline", "insufficient_balance", "session_expired", "invalid_phone"})
FAULTS_AFTER_ACCEPT = frozenset({"accept_then_drop", "hang"})
FAULT_ALIASES = {"lost_response": "accept_then_drop"}
FAULTS = FAULTS_BEFORE_ROUTING | SEND_FAULTS | FAULTS_AFTER_ACCEPT | FAULT_ALIASES.keys()
HANG_SECONDS = 3600.0
"""How long a ``hang`` fault holds the answer when no ``delay`` is given (``stop()`` cuts it short)."""
DEFAULT_SEND_RATE_LIMIT = 5
"""The API's documented send limit: requests per second per user."""

SESSION_MINUTES = 24 * 60
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_INVALID_PHONE = "Invalid phone number format, expected E.164 (e.g. +14155551234)"
_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Famulor - Login</title></head>"
    b"<body><h1>Please log in</h1><form action='/login' method='post'></form></body></html>"
)


@dataclass
class RecordedRequest:
    """One request the sandbox received (never its Authorization header).

    ``status`` is the answer's HTTP status, ``None`` while pending or when the connection was dropped.
    """

    method: str
    path: str
    query: dict[str, str]
    monotonic: float
    wall_time: float
    status: int | None = None


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


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


_Query = dict[str, str]
_Body = dict[str, Any]
_Route = Callable[[re.Match[str], _Query, _Body], "_Reply | None"]


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), headers=headers or {})


def _error(status: int, error_code: str, error: str) -> _Reply:
    return _json(status, {"success": False, "error": error, "error_code": error_code})


def _validation_error(errors: dict[str, list[str]]) -> _Reply:
    """Laravel's 422 shape: the first message, "(and N more errors)", and every message by field."""
    messages = [m for field_messages in errors.values() for m in field_messages]
    summary = messages[0]
    if len(messages) > 1:
        more = len(messages) - 1
        summary += f" (and {more} more error{'s' if more > 1 else ''})"
    return _json(422, {"message": summary, "errors": errors})


def _format_limit(limit: int | None) -> str:
    return "Unlimited" if limit is None else f"{limit:,} / 24hr"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _int_field(data: Mapping[str, Any], name: str, errors: dict[str, list[str]]) -> int | None:
    """A required integer (Laravel's ``integer`` rule also accepts digit strings)."""
    label = name.replace("_", " ")
    value = data.get(name)
    if value is None or value == "":
        errors[name] = [f"The {label} field is required."]
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(value, str) and value.isdigit():
        return int(value)
    else:
        errors[name] = [f"The {label} field must be an integer."]
    return None


def _str_field(
    data: Mapping[str, Any], name: str, errors: dict[str, list[str]], *, max_len: int, required: bool = True
) -> str | None:
    label = name.replace("_", " ")
    value = data.get(name)
    if value is None or value == "":
        if required:
            errors[name] = [f"The {label} field is required."]
    elif not isinstance(value, str):
        errors[name] = [f"The {label} field must be a string."]
    elif len(value) > max_len:
        errors[name] = [f"The {label} field must not be greater than {max_len} characters."]
    else:
        return value
    return None


def _phone_error(phone: str) -> _Reply | None:
    """422 INVALID_PHONE unless ``phone`` is E.164; a leading space is a ``+`` the client forgot to encode."""
    if _E164.fullmatch(phone):
        return None
    if phone.startswith(" "):
        return _error(
            422, "INVALID_PHONE", "Invalid phone number: a '+' in a query string must be URL-encoded as %2B"
        )
    return _error(422, "INVALID_PHONE", _INVALID_PHONE)


def _with_formatted_limit(sender: dict[str, Any]) -> dict[str, Any]:
    sender.setdefault("messaging_limit", None)
    sender.setdefault("messaging_limit_formatted", _format_limit(sender["messaging_limit"]))
    return sender


def _api_path(path: str) -> str:
    """The path as the API documents it: ``/api/user/me/`` -> ``/user/me`` (other paths unchanged)."""
    if path == "/api" or path.startswith("/api/"):
        path = path[len("/api") :]
    return path.rstrip("/") or "/"


def _loopback_host(host: str) -> str:
    """The address to bind; anything but a loopback address is refused (the sandbox has no TLS)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"The sandbox only listens on a loopback address (127.0.0.1, ::1), not {host!r}")


class FamulorSandbox:
    """
    An imitation of Famulor's Classic API on ``http://127.0.0.1:<free port>/api``.

    Use it as a context manager, or call ``start()`` and ``stop()``.

    :param api_key: the only key the sandbox accepts as ``Authorization: Bearer <key>``.
    :param senders: the WhatsApp senders (default: ``SEED_SENDERS``).
    :param templates: templates by sender id (default: ``default_templates`` for every sender).
    :param send_rate_limit: sends (POST requests) allowed per rolling second before a 429, for the
        one account; default 5, as the API. A fraction spreads one send over a longer window (0.5: one
        send per 2 s). ``None`` or 0 turns the limit off. The ``send_rate_limit`` attribute may be
        changed while the sandbox runs.
    :param host: a loopback address to listen on.
    :param port: the port to listen on; 0 picks a free one.
    """

    def __init__(
        self,
        api_key: str = SANDBOX_API_KEY,
        senders: Iterable[Mapping[str, Any]] | None = None,
        templates: Mapping[int, Iterable[Mapping[str, Any]]] | None = None,
        *,
        send_rate_limit: float | None = DEFAULT_SEND_RATE_LIMIT,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if send_rate_limit is not None and not send_rate_limit >= 0:
            raise ValueError(f"send_rate_limit must be None or at least 0, not {send_rate_limit!r}")
        self.api_key = api_key
        self.send_rate_limit = send_rate_limit or None
        self.host = _loopback_host(host)
        self._requested_port = port
        self._lock = threading.RLock()
        self._senders: dict[int, dict[str, Any]] = {}
        self._templates: dict[int, list[dict[str, Any]]] = {}
        for sender in SEED_SENDERS if senders is None else senders:
            sender_templates = None if templates is None else templates.get(int(sender["id"]), [])
            self.add_sender(sender, templates=sender_templates)
        self._scheduled: list[tuple[float, int, dict[str, Any]]] = []
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._ledger: list[bytes] = []  # JSON, serialized once: entries never change once billed
        self._sessions: dict[tuple[int, str], float] = {}  # (sender_id, phone) -> window end (epoch)
        self._conversations: dict[tuple[int, str], int] = {}
        self._send_times: deque[float] = deque()
        self._next_message_id = 1001
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # wakes requests held by "delay" and "hang" faults
        self._routes: list[tuple[str, re.Pattern[str], _Route]] = [
            ("GET", re.compile(r"/user/me"), self._me),
            ("GET", re.compile(r"/user/whatsapp/senders"), self._list_senders),
            ("GET", re.compile(r"/user/whatsapp/senders/(\d+)/templates"), self._list_templates),
            ("POST", re.compile(r"/user/whatsapp/send"), self._send_template),
            ("POST", re.compile(r"/user/whatsapp/send-freeform"), self._send_freeform),
            ("GET", re.compile(r"/user/whatsapp/session-status"), self._session_status),
        ]

    # Lifecycle

    def start(self) -> FamulorSandbox:
        """Listen and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("The sandbox is already running")
        self._server = _Server((self.host, self._requested_port), self)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="famulor-sandbox"
        )
        self._thread.daemon = True
        self._thread.start()
        log.debug("Famulor sandbox listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; calling it again does nothing.

        Returns promptly: requests held by a ``delay`` or ``hang`` fault close without an answer.
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FamulorSandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the sandbox listens on."""
        if self._server is None:
            raise RuntimeError("The sandbox is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The Classic API base URL, e.g. ``http://127.0.0.1:54321/api``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/api"

    def connection_json(self) -> str:
        """An Airflow connection in JSON form, for an ``AIRFLOW_CONN_*`` variable."""
        return json.dumps(
            {
                "conn_type": "famulor",
                "host": self.base_url,
                "password": self.api_key,
                "extra": {"timeout": 5, "max_retries": 2},
            }
        )

    def env(self, conn_id: str = "famulor_default") -> dict[str, str]:
        """Environment variables defining the connection ``conn_id``.

        :param conn_id: the Airflow connection id.
        """
        return {f"AIRFLOW_CONN_{conn_id.upper()}": self.connection_json()}

    # Inspection and control

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every API request received so far (the ``/_sandbox`` control API excluded)."""
        with self._lock:
            return list(self._requests)

    @property
    def ledger(self) -> list[dict[str, Any]]:
        """Accepted (billed) messages, oldest first."""
        with self._lock:
            entries = list(self._ledger)
        # Decoded afresh: the caller may change what it gets.
        result: list[dict[str, Any]] = json.loads(b"[" + b",".join(entries) + b"]")
        return result

    @property
    def senders(self) -> list[dict[str, Any]]:
        """The current senders, whatever their status."""
        with self._lock:
            self._apply_scheduled()
            return copy.deepcopy(list(self._senders.values()))

    def add_sender(
        self, sender: Mapping[str, Any], templates: Iterable[Mapping[str, Any]] | None = None
    ) -> None:
        """Add or replace a sender.

        :param sender: the sender's fields; ``messaging_limit_formatted`` is derived when missing.
        :param templates: its templates (default: ``default_templates(sender["id"])``).
        """
        new = _with_formatted_limit(dict(sender))
        sender_id = int(new["id"])
        with self._lock:
            self._senders[sender_id] = new
            self._templates[sender_id] = (
                default_templates(sender_id) if templates is None else [dict(t) for t in templates]
            )

    def remove_sender(self, sender_id: int) -> None:
        """Remove a sender and its templates.

        :param sender_id: the sender's id.
        """
        with self._lock:
            del self._senders[sender_id]
            self._templates.pop(sender_id, None)

    def set_sender(self, sender_id: int, **fields: Any) -> None:
        """Change a sender's fields now, e.g. ``status="online"`` or ``quality_rating="RED"``.

        :param sender_id: the sender's id; ``KeyError`` when unknown.
        """
        with self._lock:
            self._apply_scheduled()  # so that an overdue scheduled change cannot undo this one
            self._update_sender(sender_id, fields)

    def schedule_sender(self, sender_id: int, after_seconds: float, **fields: Any) -> None:
        """Change a sender's fields ``after_seconds`` from now (e.g. a sender that comes online later).

        :param sender_id: the sender's id; ``KeyError`` when unknown.
        :param after_seconds: delay before the change applies.
        """
        with self._lock:
            if sender_id not in self._senders:
                raise KeyError(sender_id)
            self._scheduled.append((time.monotonic() + after_seconds, sender_id, fields))

    def open_session(self, sender_id: int, recipient_phone: str, minutes: float = SESSION_MINUTES) -> None:
        """Open (or, with ``minutes <= 0``, expire) the 24 h free-form window between a sender and a phone.

        :param sender_id: the sender's id.
        :param recipient_phone: the recipient in E.164 form.
        :param minutes: how long the window stays open from now.
        """
        with self._lock:
            self._sessions[(sender_id, recipient_phone)] = time.time() + minutes * 60

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
            JSON body or of the query, compared exactly; default: any).
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
            path = _api_path(path)
        if fault == "hang" and delay is None:
            delay = HANG_SECONDS
        new = Fault(fault, path, times, status, retry_after, body, delay, recipient_phone)
        with self._lock:
            self._faults.append(new)

    def clear_faults(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._faults.clear()

    # Request handling (called from the server's threads)

    def handle(self, method: str, target: str, authorization: str | None, raw_body: bytes) -> _Reply | None:
        """Answer one request; ``None`` means close the connection without answering."""
        parts = urlsplit(target)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = self._parse_body(raw_body)
        if path.startswith("/_sandbox/"):
            return self._control(method, path, query, body)
        record = RecordedRequest(method, path, query, time.monotonic(), time.time())
        with self._lock:
            self._requests.append(record)
            self._apply_scheduled()
        reply = self._answer(method, path, query, body, authorization)
        record.status = None if reply is None else reply.status
        return reply

    def _answer(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any], authorization: str | None
    ) -> _Reply | None:
        phone = body.get("recipient_phone", query.get("recipient_phone"))
        fault = self._take_fault(FAULTS_BEFORE_ROUTING, _api_path(path), phone)
        if fault is not None and not self._wait(fault.delay):
            return None
        if fault is not None and fault.fault != "delay":
            return self._fault_reply(fault)
        if not path.startswith("/api/"):
            return _json(404, {"message": f"The route {path.lstrip('/')} could not be found."})
        route_path = _api_path(path)
        allowed = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(route_path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            if not self._authorized(authorization):
                return _json(401, {"message": "Unauthenticated."})
            retry_after = self._throttle() if method == "POST" else None  # the POST routes are the sends
            if retry_after is not None:
                payload = {"message": "Too Many Attempts.", "retry_after": retry_after}
                return _json(429, payload, {"Retry-After": str(retry_after)})
            return handler(match, query, body)
        if allowed:
            message = f"The {method} method is not supported for route {path.lstrip('/')}."
            return _json(405, {"message": message}, {"Allow": ", ".join(allowed)})
        return _json(404, {"message": f"The route {path.lstrip('/')} could not be found."})

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        expected = self.api_key.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    @staticmethod
    def _parse_body(raw_body: bytes) -> dict[str, Any]:
        # Like Laravel: a body that is not a JSON object is no input at all, so validation reports it.
        try:
            body = json.loads(raw_body) if raw_body else {}
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _apply_scheduled(self) -> None:
        # Scheduled changes apply lazily, on the next look at the senders: no timer thread to stop.
        now = time.monotonic()
        due = [item for item in self._scheduled if item[0] <= now]
        self._scheduled = [item for item in self._scheduled if item[0] > now]
        for _, sender_id, fields in sorted(due, key=lambda item: item[0]):
            if sender_id in self._senders:
                self._update_sender(sender_id, fields)

    def _update_sender(self, sender_id: int, fields: Mapping[str, Any]) -> None:
        sender = self._senders[sender_id]
        sender.update(fields)
        if "messaging_limit" in fields and "messaging_limit_formatted" not in fields:
            sender["messaging_limit_formatted"] = _format_limit(sender["messaging_limit"])

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
    def _fault_reply(fault: Fault) -> _Reply | None:
        if fault.fault == "drop":
            return None
        if fault.fault == "html":
            return _Reply(200, _HTML_PAGE, "text/html; charset=UTF-8")
        if fault.fault == "invalid_json":
            return _Reply(200, b'{"data": [{"id": 12, "phone_number": "+1415')
        if fault.fault == "no_data":
            return _json(200, {"items": []})
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
            return _Reply(fault.status, body.encode(), "text/plain; charset=UTF-8", headers)
        return _json(fault.status, body, headers)

    # The Classic API

    def _me(self, match: re.Match[str], query: _Query, body: _Body) -> _Reply:
        return _json(200, {"name": "Sandbox User", "email": "sandbox@example.com", "total_balance": 248.75})

    def _list_senders(self, match: re.Match[str], query: _Query, body: _Body) -> _Reply:
        # The documented filter values; "all" also shows dashboard-only states such as "connecting".
        status = query.get("status") or "online"
        if status not in ("online", "offline", "all"):
            return _validation_error({"status": ["The selected status is invalid."]})
        with self._lock:
            data = [s for s in self._senders.values() if status == "all" or s.get("status") == status]
            return _json(200, {"data": data})

    def _list_templates(self, match: re.Match[str], query: _Query, body: _Body) -> _Reply:
        status = query.get("status") or "approved"
        if status not in ("approved", "all"):
            return _validation_error({"status": ["The selected status is invalid."]})
        with self._lock:
            templates = self._templates.get(int(match.group(1)))
            if templates is None:
                return _error(404, "SENDER_NOT_FOUND", "Sender not found")
            data = [t for t in templates if status == "all" or t.get("status") == "approved"]
            return _json(200, {"data": data})

    def _send_template(self, match: re.Match[str], query: _Query, body: _Body) -> _Reply | None:
        errors: dict[str, list[str]] = {}
        sender_id = _int_field(body, "sender_id", errors)
        template_id = _int_field(body, "template_id", errors)
        phone = _str_field(body, "recipient_phone", errors, max_len=32)
        name = _str_field(body, "recipient_name", errors, max_len=255, required=False)
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, (dict, list)):
            errors["variables"] = ["The variables field must be an array."]
        if errors:
            return _validation_error(errors)
        assert sender_id is not None and template_id is not None and phone is not None
        return self._send(
            "/user/whatsapp/send",
            sender_id,
            phone,
            template_id=template_id,
            recipient_name=name,
            variables=variables or {},
        )

    def _send_freeform(self, match: re.Match[str], query: _Query, body: _Body) -> _Reply | None:
        errors: dict[str, list[str]] = {}
        sender_id = _int_field(body, "sender_id", errors)
        phone = _str_field(body, "recipient_phone", errors, max_len=32)
        message = _str_field(body, "message", errors, max_len=4096)
        if errors:
            return _validation_error(errors)
        assert sender_id is not None and phone is not None and message is not None
        return self._send("/user/whatsapp/send-freeform", sender_id, phone, message=message)

    def _send(
        self,
        path: str,
        sender_id: int,
        phone: str,
        *,
        template_id: int | None = None,
        recipient_name: str | None = None,
        variables: Any = None,
        message: str | None = None,
    ) -> _Reply | None:
        """Check, bill and record one template (``template_id``) or free-form (``message``) send."""
        freeform = message is not None
        kinds = SEND_FAULTS if freeform else SEND_FAULTS - {"session_expired"}
        fault = self._take_fault(kinds, path, phone)
        if fault is not None and not self._wait(fault.delay):
            return None
        offline_status = 503 if freeform else 422  # the API's own inconsistency, per its docs
        if fault is not None and fault.fault == "insufficient_balance":
            return _error(402, "INSUFFICIENT_BALANCE", "Insufficient balance. Please top up your account.")
        if fault is not None and fault.fault == "sender_offline":
            return _error(offline_status, "SENDER_OFFLINE", "The WhatsApp sender is offline")
        if fault is not None and fault.fault == "invalid_phone":
            return _error(422, "INVALID_PHONE", _INVALID_PHONE)
        if fault is not None and fault.fault == "session_expired":
            return _session_expired()
        with self._lock:
            sender = self._senders.get(sender_id)
            if sender is None:
                return _error(404, "SENDER_NOT_FOUND", "Sender not found")
            if sender.get("status") != "online":
                return _error(offline_status, "SENDER_OFFLINE", "The WhatsApp sender is offline")
            if not freeform:
                template = next((t for t in self._templates[sender_id] if t.get("id") == template_id), None)
                if template is None:
                    return _error(404, "TEMPLATE_NOT_FOUND", "Template not found")
                if template.get("status") != "approved":
                    return _error(422, "TEMPLATE_NOT_APPROVED", "Template is not approved by WhatsApp")
            phone_error = _phone_error(phone)
            if phone_error is not None:
                return phone_error
            key = (sender_id, phone)
            if freeform and self._sessions.get(key, 0) <= time.time():
                return _session_expired()
            if not freeform:
                # The brief's simplification: an accepted template opens the 24 h window.
                self._sessions[key] = time.time() + SESSION_MINUTES * 60
            conversation_id = self._conversations.setdefault(key, 501 + len(self._conversations))
            message_id = self._next_message_id
            self._next_message_id += 1
            self._record_message(
                {
                    "message_id": message_id,
                    "conversation_id": conversation_id,
                    "kind": "freeform" if freeform else "template",
                    "sender_id": sender_id,
                    "recipient_phone": phone,
                    "recipient_name": recipient_name,
                    "template_id": template_id,
                    "variables": variables,
                    "message": message,
                    "accepted_at": time.time(),
                }
            )
        fault = self._take_fault(FAULTS_AFTER_ACCEPT, path, phone)
        if fault is not None and (not self._wait(fault.delay) or fault.fault == "accept_then_drop"):
            return None  # billed, but the client never learns it
        return _json(
            200,
            {
                "success": True,
                "conversation_id": conversation_id,
                "message_id": message_id,
                "whatsapp_message_id": f"wamid.SANDBOX{message_id:012d}",
                "message_sid": f"SM{message_id:032x}",
                "status": "queued",
            },
        )

    def _record_message(self, entry: dict[str, Any]) -> None:
        """Bill one message (the caller holds the lock)."""
        self._ledger.append(json.dumps(entry).encode())

    def _throttle(self) -> int | None:
        """Count one send against the limit; the seconds to wait (``Retry-After``) when over it."""
        limit = self.send_rate_limit
        if not limit:
            return None
        # One key is ever authorized, so "per account" is a single rolling window. Like Laravel's
        # throttle, a refused attempt does not count.
        capacity = max(1, int(limit))
        window = capacity / limit
        with self._lock:
            now = time.monotonic()
            while self._send_times and self._send_times[0] <= now - window:
                self._send_times.popleft()
            if len(self._send_times) >= capacity:
                return max(1, math.ceil(self._send_times[-capacity] + window - now))
            self._send_times.append(now)
            return None

    def _session_status(self, match: re.Match[str], query: _Query, body: _Body) -> _Reply:
        errors: dict[str, list[str]] = {}
        sender_id = _int_field(query, "sender_id", errors)
        phone = _str_field(query, "recipient_phone", errors, max_len=32)
        if errors:
            return _validation_error(errors)
        assert sender_id is not None and phone is not None
        with self._lock:
            if sender_id not in self._senders:
                return _error(404, "SENDER_NOT_FOUND", "Sender not found")
            phone_error = _phone_error(phone)
            if phone_error is not None:
                return phone_error
            expires = self._sessions.get((sender_id, phone))
        now = time.time()
        if expires is None:
            status: dict[str, Any] = {
                "is_open": False,
                "can_send_freeform": False,
                "requires_template": True,
                "minutes_remaining": 0,
                "message": "No conversation yet. Send a template message to start one.",
            }
        elif expires > now:
            status = {
                "is_open": True,
                "can_send_freeform": True,
                "requires_template": False,
                "minutes_remaining": int((expires - now) // 60),
                "expires_at": _iso(expires),
                "message": "Session is open. You can send free-form messages.",
            }
        else:
            status = {
                "is_open": False,
                "can_send_freeform": False,
                "requires_template": True,
                "minutes_remaining": 0,
                "expired_at": _iso(expires),
                "message": "Session expired. Send a template message to reopen the conversation.",
            }
        payload = {"success": True, "has_conversation": expires is not None, "session_status": status}
        return _json(200, payload)

    # The control API, for a sandbox running in another process

    def _page(self, rows: list[Any], query: _Query, to_json: Callable[[Any], bytes]) -> _Reply:
        """``{"data": [...], "total", "next_since"}`` for ``rows[since:since + limit]``."""
        since = int(query.get("since") or 0)
        limit = None if query.get("limit") in (None, "") else int(query["limit"])
        if since < 0 or (limit is not None and limit < 0):
            raise ValueError("since and limit must be at least 0")
        with self._lock:
            total = len(rows)
            page = rows[since:] if limit is None else rows[since : since + limit]
        # Serialized outside the lock: rows are only ever appended, never replaced.
        data = b",".join(to_json(row) for row in page)
        tail = b'], "total": %d, "next_since": %d}' % (total, min(since, total) + len(page))
        return _Reply(200, b'{"data": [' + data + tail)

    def _control(self, method: str, path: str, query: _Query, body: _Body) -> _Reply:
        """
        The ``/_sandbox`` endpoints (no auth; the sandbox listens on loopback only).

        ``GET /_sandbox/ledger`` and ``GET /_sandbox/requests`` answer ``{"data": [...], "total": T,
        "next_since": N}``; ``?since=N`` skips the first N entries and ``?limit=L`` caps the page, so
        a poller asks for ``since=<the last next_since>`` and reads only what is new.
        ``POST /_sandbox/faults`` takes ``inject``'s arguments as a JSON object (``fault``, ``path``,
        ``recipient_phone``, ``delay``...); ``DELETE /_sandbox/faults`` clears them.
        ``POST /_sandbox/sessions`` takes ``open_session``'s; ``POST /_sandbox/senders/<id>`` takes
        sender fields, plus ``after_seconds`` to schedule the change.
        """
        ok = _json(200, {"ok": True})
        try:
            if (method, path) == ("GET", "/_sandbox/ledger"):
                return self._page(self._ledger, query, lambda entry: entry)
            if (method, path) == ("GET", "/_sandbox/requests"):
                return self._page(self._requests, query, lambda r: json.dumps(_request_dict(r)).encode())
            if (method, path) == ("POST", "/_sandbox/faults"):
                self.inject(**body)
                return ok
            if (method, path) == ("DELETE", "/_sandbox/faults"):
                self.clear_faults()
                return ok
            if (method, path) == ("POST", "/_sandbox/sessions"):
                self.open_session(**body)
                return ok
            match = re.fullmatch(r"/_sandbox/senders/(\d+)", path)
            if method == "POST" and match:
                fields = dict(body)
                after_seconds = fields.pop("after_seconds", None)
                if after_seconds is None:
                    self.set_sender(int(match.group(1)), **fields)
                else:
                    self.schedule_sender(int(match.group(1)), float(after_seconds), **fields)
                return ok
        except KeyError as exc:
            return _json(404, {"message": f"Unknown sender {exc}"})
        except (TypeError, ValueError) as exc:
            return _json(400, {"message": str(exc)})
        return _json(404, {"message": f"No sandbox control endpoint {method} {path}"})


def _request_dict(record: RecordedRequest) -> dict[str, Any]:
    return {
        "method": record.method,
        "path": record.path,
        "query": record.query,
        "monotonic": record.monotonic,
        "wall_time": record.wall_time,
        "status": record.status,
    }


def _session_expired() -> _Reply:
    return _error(
        403, "SESSION_EXPIRED", "The 24-hour session has expired. Send a template message to reopen it."
    )


class _Server(ThreadingHTTPServer):
    # A request held by a "delay" or "hang" fault, or an idle client, must not block stop():
    # server_close() would otherwise join every handler thread.
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], sandbox: FamulorSandbox) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sandbox = sandbox
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall; we need none.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout during a "delay" fault) is routine here, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("Famulor sandbox: client %s went away", client_address)
        else:
            log.exception("Famulor sandbox failed to answer %s", client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "FamulorSandbox"
    sys_version = ""
    timeout = 10  # an idle client must not hold a thread forever

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        raw_body = self.rfile.read(length) if length > 0 else b""
        authorization = self.headers.get("Authorization")
        reply = self.server.sandbox.handle(self.command, self.path, authorization, raw_body)
        if reply is None:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line only (no headers, so never the API key), at DEBUG instead of stderr.
        message = format % args
        log.debug("sandbox %s: %s", self.address_string(), message)
