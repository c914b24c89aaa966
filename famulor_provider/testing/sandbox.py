"""A local HTTP server that imitates Famulor's Classic API, for DAGs and tests without an account.

The parts, one module per concern: ``state`` (seed data, shared state), ``replies`` (answers and
field validation), ``faults`` (``inject``), ``messaging`` (senders, templates, sends, sessions),
``conversations`` (listing, read, customers who write) over ``conversation_index`` (their
order and cursor), ``control`` (the ``/_sandbox`` API) and ``server`` (HTTP). This module
assembles them.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from famulor_provider.testing.control import ControlMixin
from famulor_provider.testing.conversation_index import CONVERSATION_ORDERS, ConversationIndex
from famulor_provider.testing.faults import FAULTS, FAULTS_BEFORE_ROUTING, HANG_SECONDS, Fault
from famulor_provider.testing.replies import Reply, Route, api_path, json_reply
from famulor_provider.testing.server import Server, loopback_host
from famulor_provider.testing.state import (
    DEFAULT_SEND_RATE_LIMIT,
    SANDBOX_API_KEY,
    SEED_SENDERS,
    SEED_TEMPLATES,
    SESSION_MINUTES,
    RecordedRequest,
    default_templates,
)
from famulor_provider.testing.webhooks import WebhookDispatcher

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "CONVERSATION_ORDERS",
    "DEFAULT_SEND_RATE_LIMIT",
    "FAULTS",
    "HANG_SECONDS",
    "SANDBOX_API_KEY",
    "SEED_SENDERS",
    "SEED_TEMPLATES",
    "SESSION_MINUTES",
    "FamulorSandbox",
    "Fault",
    "RecordedRequest",
    "default_templates",
]

log = logging.getLogger(__name__)


class FamulorSandbox(ControlMixin):
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
    :param conversation_order: the order of ``GET /user/conversations``, one of
        ``CONVERSATION_ORDERS``: ``updated_desc`` (most recently active first), ``created_asc``,
        ``created_desc``, or ``shuffled`` (a fixed pseudo-random order, unrelated to activity and
        creation: proves that a client does not depend on the order, which the API does not document).
    :param sends_in_history: whether an accepted send appends its text (the template filled in, or
        the free-form message) to the conversation's history as an ``assistant`` message; either
        way the send creates the conversation when absent (the API does not document which).
    :param customer_reply: ``(text, seconds)``: the customer of every accepted send answers
        ``text`` that many seconds later (see ``schedule_receive``).
    :param request_rate_limit: reads (GET requests) allowed per rolling minute before a 429 with
        ``Retry-After``; ``None`` (default) or 0: no limit. The attribute may change while running.
    :param webhook_time_scale: multiplies every webhook delay (the status steps and Famulor's retries
        after 30, 60 and 120 s): 0.01 runs the whole schedule in about 2 s. Webhooks go out only for
        senders given a URL (``set_status_webhook``) and to ``conversation_ended_url``.
    :param conversation_ended_url: where ``end_conversation`` posts by default.
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
        conversation_order: str = "updated_desc",
        sends_in_history: bool = True,
        customer_reply: tuple[str, float] | None = None,
        request_rate_limit: float | None = None,
        webhook_time_scale: float = 1.0,
        conversation_ended_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if send_rate_limit is not None and not send_rate_limit >= 0:
            raise ValueError(f"send_rate_limit must be None or at least 0, not {send_rate_limit!r}")
        if request_rate_limit is not None and not request_rate_limit >= 0:
            raise ValueError(f"request_rate_limit must be None or at least 0, not {request_rate_limit!r}")
        if customer_reply is not None:
            text, after = customer_reply
            if not isinstance(text, str) or not text or not isinstance(after, (int, float)) or not after >= 0:
                raise ValueError(f"customer_reply must be (text, seconds >= 0), not {customer_reply!r}")
            customer_reply = (text, float(after))
        self.api_key = api_key
        self.send_rate_limit = send_rate_limit or None
        self.request_rate_limit = request_rate_limit or None
        self.sends_in_history = sends_in_history
        self.customer_reply = customer_reply
        self._conversation_index = ConversationIndex(conversation_order)
        self._scheduled_receives = []
        self.host = loopback_host(host)
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
        self._send_times: deque[float] = deque()
        self._read_times: deque[float] = deque()
        self._next_message_id = 1001
        self._webhooks = WebhookDispatcher(webhook_time_scale)
        self._status_webhooks: dict[int, tuple[str, str]] = {}
        self._outcomes: dict[str, tuple[str, int | None]] = {}
        self.conversation_ended_url = conversation_ended_url
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # wakes requests held by "delay" and "hang" faults
        self._routes: list[tuple[str, re.Pattern[str], Route]] = [
            ("GET", re.compile(r"/user/me"), self._me),
            ("GET", re.compile(r"/user/whatsapp/senders"), self._list_senders),
            ("GET", re.compile(r"/user/whatsapp/senders/(\d+)/templates"), self._list_templates),
            ("POST", re.compile(r"/user/whatsapp/send"), self._send_template),
            ("POST", re.compile(r"/user/whatsapp/send-freeform"), self._send_freeform),
            ("GET", re.compile(r"/user/whatsapp/session-status"), self._session_status),
            ("GET", re.compile(r"/user/conversations"), self._list_conversations),
            ("GET", re.compile(r"/conversations/([^/]+)"), self._get_conversation),
        ]

    # Lifecycle

    def start(self) -> FamulorSandbox:
        """Listen and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("The sandbox is already running")
        self._server = Server((self.host, self._requested_port), self)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="famulor-sandbox"
        )
        self._thread.daemon = True
        self._thread.start()
        self._webhooks.start()
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
        with self._lock:
            self._scheduled_receives.clear()
        self._webhooks.stop()
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

    def handle(self, method: str, target: str, authorization: str | None, raw_body: bytes) -> Reply | None:
        """Answer one request; ``None`` means close the connection without answering."""
        parts = urlsplit(target)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = self._parse_body(raw_body)
        with self._lock:
            self._apply_scheduled()
            self._apply_due_receives()
        if path.startswith("/_sandbox/"):
            return self._control(method, path, query, body)
        record = RecordedRequest(method, path, query, time.monotonic(), time.time())
        with self._lock:
            self._requests.append(record)
        reply = self._answer(method, path, query, body, authorization)
        record.status = None if reply is None else reply.status
        return reply

    def _answer(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any], authorization: str | None
    ) -> Reply | None:
        phone = body.get("recipient_phone", query.get("recipient_phone", query.get("customer_phone")))
        fault = self._take_fault(FAULTS_BEFORE_ROUTING, api_path(path), phone)
        if fault is not None and not self._wait(fault.delay):
            return None
        if fault is not None and fault.fault != "delay":
            return self._fault_reply(fault)
        if not path.startswith("/api/"):
            return json_reply(404, {"message": f"The route {path.lstrip('/')} could not be found."})
        route_path = api_path(path)
        allowed = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(route_path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            if not self._authorized(authorization):
                return json_reply(401, {"message": "Unauthenticated."})
            retry_after = self._throttle() if method == "POST" else self._throttle_reads()  # POSTs: sends
            if retry_after is not None:
                payload = {"message": "Too Many Attempts.", "retry_after": retry_after}
                return json_reply(429, payload, {"Retry-After": str(retry_after)})
            return handler(match, query, body)
        if allowed:
            message = f"The {method} method is not supported for route {path.lstrip('/')}."
            return json_reply(405, {"message": message}, {"Allow": ", ".join(allowed)})
        return json_reply(404, {"message": f"The route {path.lstrip('/')} could not be found."})

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
