"""The webhooks Famulor posts: delivery receipts per sender, ended conversations, the test button.

``WebhookDispatcher`` posts bodies with Famulor's retry schedule (after 30, 60 and 120 s when the
answer is a 5xx, a 429 or none; a 4xx is never retried for receipts; every non-2xx is retried for
ended conversations), in worker threads, and records every attempt. ``time_scale`` multiplies every
delay (status steps and retries) so a test sees the whole schedule in seconds.

``WebhooksMixin`` is the sandbox's side: which URL and secret each sender posts to, what becomes of
each recipient's message (``read`` by default; ``delivered``, ``sent``, ``failed:<code>``,
``undelivered:<code>``), and the bodies, field for field as Famulor documents them.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from famulor_provider.testing.replies import iso
from famulor_provider.testing.state import SandboxState

if TYPE_CHECKING:
    from collections.abc import Mapping

    from famulor_provider.testing.conversation_index import Conversation, ConversationIndex

RETRY_DELAYS = (30.0, 60.0, 120.0)
"""Famulor's retry schedule: seconds before the 2nd, 3rd and 4th attempt (then the webhook is dropped)."""
STATUS_DELAYS = {"sent": 0.5, "delivered": 2.0, "read": 5.0, "failed": 2.0, "undelivered": 2.0}
"""Seconds after the accepted send at which each status is posted (times ``time_scale``)."""
SANDBOX_WEBHOOK_SECRET = "sandbox-webhook-signing-secret"
"""The signing secret of a sender whose webhook URL is set without one."""
SIGNATURE_HEADER = "X-Signature-256"
OUTCOMES = ("read", "delivered", "sent", "failed", "undelivered")
PROVIDER_ERRORS: dict[int, tuple[str, str]] = {
    63016: (
        "Failed to send freeform message because you are outside the allowed window.",
        "24h window expired: send a template instead.",
    ),
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "Meta's per-user marketing limit.",
    ),
    131026: ("Message undeliverable.", "The number is not on WhatsApp or cannot receive this message."),
    63024: ("Invalid message recipient.", "The recipient cannot receive WhatsApp messages."),
}
DEFAULT_ERROR_CODES = {"failed": 131049, "undelivered": 131026}


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(body, secret)>``, the ``X-Signature-256`` header's value.

    :param secret: the sender's signing secret.
    :param body: the raw body as posted.
    """
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def parse_outcome(outcome: str) -> tuple[str, int | None]:
    """``"read"``, ``"delivered"``, ``"failed:63016"`` or ``"undelivered"`` -> (status, error code).

    :param outcome: what becomes of a recipient's messages.
    """
    status, sep, code = str(outcome).partition(":")
    if status not in OUTCOMES or (sep and status not in DEFAULT_ERROR_CODES):
        raise ValueError(
            f"outcome must be one of {OUTCOMES} (failed and undelivered may add :<error code>), "
            f"not {outcome!r}"
        )
    if status not in DEFAULT_ERROR_CODES:
        return status, None
    if not sep:
        return status, DEFAULT_ERROR_CODES[status]
    if not code.isdigit():
        raise ValueError(f"the error code of outcome {outcome!r} must be an integer")
    return status, int(code)


@dataclass
class Delivery:
    """One webhook and its attempts; ``state`` is ``pending``, ``delivered``, ``refused`` or ``dropped``."""

    kind: str  # "message_status", "conversation_ended" or "test"
    key: str  # the dedupe key the receiver computes: whatsapp_message_id:status, conversation_id:ended
    url: str
    body: bytes
    headers: dict[str, str]
    retry_client_errors: bool  # ended conversations: any non-2xx is retried; receipts: 4xx never
    state: str = "pending"
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "url": self.url,
            "state": self.state,
            "attempts": [dict(a) for a in self.attempts],
        }


class WebhookDispatcher:
    """Posts deliveries when due, retries them on Famulor's schedule, records every attempt.

    :param time_scale: multiplies every delay (1.0: Famulor's real schedule).
    :param timeout: seconds to wait for an answer before the attempt counts as "no answer".
    :param workers: deliveries posted at the same time.
    """

    def __init__(self, time_scale: float = 1.0, timeout: float = 10.0, workers: int = 8) -> None:
        if not time_scale >= 0 or time_scale == float("inf"):
            raise ValueError(f"time_scale must be a number of at least 0, not {time_scale!r}")
        self.time_scale = float(time_scale)
        self.timeout = timeout
        self._workers = workers
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, Delivery]] = []  # heap: (due monotonic, n, delivery)
        self._counter = itertools.count()
        self._deliveries: list[Delivery] = []
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = False

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="famulor-sandbox-webhook")
            self._thread = threading.Thread(target=self._run, name="famulor-sandbox-webhooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop posting; pending deliveries stay ``pending`` (Famulor would never post them)."""
        with self._cond:
            thread, pool = self._thread, self._pool
            self._thread = self._pool = None
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout=5)
        if pool is not None:  # an attempt in flight ends by its own timeout; stop() returns now
            pool.shutdown(wait=False, cancel_futures=True)

    def post(self, delivery: Delivery, after_seconds: float = 0.0) -> None:
        """Post ``delivery`` ``after_seconds`` (times ``time_scale``) from now.

        :param delivery: the webhook.
        :param after_seconds: the unscaled delay.
        """
        with self._cond:
            self._deliveries.append(delivery)
            self._schedule(delivery, after_seconds)

    def _schedule(self, delivery: Delivery, after_seconds: float) -> None:
        due = time.monotonic() + after_seconds * self.time_scale
        heapq.heappush(self._queue, (due, next(self._counter), delivery))
        self._cond.notify_all()

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """Every webhook so far, oldest first, with its attempts."""
        with self._cond:
            return [d.as_dict() for d in self._deliveries]

    def deliveries_since(self, since: int, limit: int | None) -> tuple[list[dict[str, Any]], int]:
        with self._cond:
            rows = self._deliveries[since:] if limit is None else self._deliveries[since : since + limit]
            return [d.as_dict() for d in rows], len(self._deliveries)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no delivery is pending; whether that happened within ``timeout`` seconds.

        :param timeout: seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                if not self._queue:
                    self._cond.wait()
                    continue
                due, _, delivery = self._queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._queue)
                assert self._pool is not None
                self._in_flight += 1
                self._pool.submit(self._attempt, delivery)

    def _attempt(self, delivery: Delivery) -> None:
        status, error = None, None
        try:
            status = _post(delivery.url, delivery.body, delivery.headers, self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            error = type(exc).__name__
        with self._cond:
            self._in_flight -= 1
            delivery.attempts.append({"at": time.time(), "http_status": status, "error": error})
            if status is not None and 200 <= status < 300:
                delivery.state = "delivered"
            elif (
                status is not None
                and 400 <= status < 500
                and status != 429
                and not delivery.retry_client_errors
            ):
                delivery.state = "refused"
            elif len(delivery.attempts) > len(RETRY_DELAYS):
                delivery.state = "dropped"
            elif not self._stopping:
                self._schedule(delivery, RETRY_DELAYS[len(delivery.attempts) - 1])
            self._cond.notify_all()


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST ``body`` to ``url`` on a fresh connection (no proxy, like a server-side client); the status."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        connection.request("POST", target, body=body, headers=dict(headers))
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


class WebhooksMixin(SandboxState):
    """Webhook settings (per sender, per recipient), the bodies, and when they are posted."""

    conversation_ended_url: str | None
    _webhooks: WebhookDispatcher
    _status_webhooks: dict[int, tuple[str, str]]  # sender_id -> (url, secret)
    _outcomes: dict[str, tuple[str, int | None]]  # recipient phone -> (final status, error code)
    _conversation_index: ConversationIndex

    def set_status_webhook(
        self, sender_id: int, url: str | None, secret: str = SANDBOX_WEBHOOK_SECRET
    ) -> None:
        """Post the delivery receipts of ``sender_id``'s messages to ``url``, signed with ``secret``.

        :param sender_id: the sender (``KeyError`` when unknown).
        :param url: the receiver's URL; ``None`` stops the receipts.
        :param secret: the sender's signing secret.
        """
        with self._lock:
            if int(sender_id) not in self._senders:
                raise KeyError(sender_id)
            if url is None:
                self._status_webhooks.pop(int(sender_id), None)
                return
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"url must be an http:// or https:// URL, not {url!r}")
            if not isinstance(secret, str) or not secret:
                raise ValueError("secret must be a non-empty string")
            self._status_webhooks[int(sender_id)] = (url, secret)

    def set_recipient_outcome(self, recipient_phone: str, outcome: str | None) -> None:
        """What becomes of the messages to ``recipient_phone``: ``read`` (default), ``delivered`` (read
        receipts off), ``sent`` (never delivered: the phone stays off), ``failed[:<code>]`` or
        ``undelivered[:<code>]``; ``None`` resets it.

        :param recipient_phone: the recipient in E.164 form.
        :param outcome: see above.
        """
        with self._lock:
            if outcome is None:
                self._outcomes.pop(recipient_phone, None)
            else:
                self._outcomes[recipient_phone] = parse_outcome(outcome)

    @property
    def webhook_time_scale(self) -> float:
        """Multiplies every webhook delay (status steps and Famulor's 30/60/120 s retries)."""
        return self._webhooks.time_scale

    @webhook_time_scale.setter
    def webhook_time_scale(self, value: float) -> None:
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"webhook_time_scale must be a number of at least 0, not {value!r}")
        self._webhooks.time_scale = float(value)

    @property
    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Every webhook posted or pending: ``kind``, ``key``, ``url``, ``state``, ``attempts``."""
        return self._webhooks.deliveries

    def wait_for_webhooks(self, timeout: float = 30.0) -> bool:
        """Wait until every webhook is delivered, refused or dropped; whether it happened in time.

        :param timeout: seconds.
        """
        return self._webhooks.wait_idle(timeout)

    def send_test_webhook(self, sender_id: int) -> None:
        """What the sender settings' test button posts: ``test: true`` with placeholder values.

        :param sender_id: a sender whose webhook URL is set (``KeyError`` otherwise).
        """
        with self._lock:
            url, secret = self._status_webhooks[int(sender_id)]
            sender = self._senders[int(sender_id)]
            body = self._status_body(
                sender,
                to="+10000000000",
                whatsapp_message_id=123456789,
                message_sid="SM00000000000000000000000000000000",
                meta_message_id="wamid.TEST",
                conversation_id=None,
                assistant_id=None,
                status="delivered",
                error_code=None,
            )
        body = {"test": True, **body}
        self._webhooks.post(_signed("test", "test", url, body, secret))

    def end_conversation(
        self,
        conversation_id: str | None = None,
        *,
        sender_phone: str | None = None,
        customer_phone: str | None = None,
        extracted_variables: Mapping[str, Any] | None = None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """Post a conversation-ended webhook for a conversation (by uuid, or by its two numbers).

        :param conversation_id: the conversation's uuid.
        :param sender_phone: with ``customer_phone``, instead of ``conversation_id``.
        :param customer_phone: see ``sender_phone``.
        :param extracted_variables: what the assistant extracted (default ``{}``).
        :param url: where to post (default: ``conversation_ended_url``).
        :return: the body posted.
        """
        with self._lock:
            conversation = self._find_conversation(conversation_id, sender_phone, customer_phone)
            target = url or self.conversation_ended_url
            if not target:
                raise ValueError("no url given and no conversation_ended_url configured")
            body = _ended_body(conversation, dict(extracted_variables or {}))
        raw = json.dumps(body).encode()
        delivery = Delivery(
            "conversation_ended",
            f"{conversation.id}:ended",
            target,
            raw,
            {"Content-Type": "application/json", "User-Agent": "Famulor-Webhook/1.0"},
            retry_client_errors=True,
        )
        self._webhooks.post(delivery)
        return body

    def _find_conversation(
        self, conversation_id: str | None, sender_phone: str | None, customer_phone: str | None
    ) -> Conversation:
        index = self._conversation_index
        if conversation_id is not None:
            found = next((c for c in index.created if c.id == conversation_id), None)
        elif sender_phone and customer_phone:
            found = index.by_pair.get((sender_phone, customer_phone))
        else:
            raise ValueError("give conversation_id, or sender_phone and customer_phone")
        if found is None:
            raise KeyError(conversation_id or f"{sender_phone}/{customer_phone}")
        return found

    def _queue_receipts(
        self,
        sender: Mapping[str, Any],
        phone: str,
        *,
        whatsapp_message_id: int,
        message_sid: str,
        meta_message_id: str,
        conversation_uuid: str | None,
        assistant_id: str | None,
    ) -> None:
        """Schedule the receipts of one accepted send (the caller holds the lock)."""
        target = self._status_webhooks.get(int(sender["id"]))
        if target is None:
            return
        url, secret = target
        final, error_code = self._outcomes.get(phone, ("read", None))
        steps = {
            "read": ("sent", "delivered", "read"),
            "delivered": ("sent", "delivered"),
            "sent": ("sent",),
        }.get(final, ("sent", final))
        for status in steps:
            body = self._status_body(
                sender,
                to=phone,
                whatsapp_message_id=whatsapp_message_id,
                message_sid=message_sid,
                meta_message_id=meta_message_id,
                conversation_id=conversation_uuid,
                assistant_id=assistant_id,
                status=status,
                error_code=error_code if status == final else None,
            )
            key = f"{whatsapp_message_id}:{status}"
            self._webhooks.post(_signed("message_status", key, url, body, secret), STATUS_DELAYS[status])

    @staticmethod
    def _status_body(
        sender: Mapping[str, Any],
        *,
        to: str,
        whatsapp_message_id: int,
        message_sid: str,
        meta_message_id: str,
        conversation_id: str | None,
        assistant_id: str | None,
        status: str,
        error_code: int | None,
    ) -> dict[str, Any]:
        error_message, error_description = (
            (None, None)
            if error_code is None
            else PROVIDER_ERRORS.get(error_code, (f"Provider error {error_code}.", None))
        )
        now = iso(time.time())
        return {
            "event": "message_status",
            "whatsapp_message_id": whatsapp_message_id,
            "message_sid": message_sid,
            "meta_message_id": meta_message_id,
            "conversation_id": conversation_id,
            "assistant_id": assistant_id,
            "sender": {
                "id": sender["id"],
                "phone_number": sender["phone_number"],
                "display_name": sender.get("display_name"),
            },
            "to": to,
            "from": sender["phone_number"],
            "direction": "outbound",
            "status": status,
            "error_code": error_code,
            "error_message": error_message,
            "error_description": error_description,
            "timestamp": now,
            "provider_timestamp": now,
        }


def _signed(kind: str, key: str, url: str, body: dict[str, Any], secret: str) -> Delivery:
    raw = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Famulor-Webhook/1.0",
        SIGNATURE_HEADER: signature(secret, raw),
    }
    return Delivery(kind, key, url, raw, headers, retry_client_errors=False)


def _ended_body(conversation: Conversation, extracted_variables: dict[str, Any]) -> dict[str, Any]:
    """The conversation-ended body (the sandbox's history has no per-message time: the last update's)."""
    ended = time.time()
    transcript = [
        {
            "role": message["role"],
            "content": message["content"],
            "timestamp": iso(conversation.updated_at),
            "timestamp_unix": int(conversation.updated_at),
        }
        for message in conversation.history
    ]
    return {
        "id": conversation.seq + 1,
        "conversation_id": conversation.id,
        "assistant_id": conversation.assistant_id,
        "type": "whatsapp",
        "message_count": len(conversation.history),
        "status": "ended",
        "extracted_variables": extracted_variables,
        "input_variables": dict(conversation.variables or {}),
        "transcript": transcript,
        "formatted_transcript": "\n".join(f"{m['role']}: {m['content']}" for m in conversation.history),
        "attachments": [],
        "customer_phone": conversation.customer_phone,
        "customer_name": conversation.customer_name,
        "sender": {"phone_number": conversation.sender_phone, "display_name": conversation.sender_name},
        "created_at": iso(conversation.created_at),
        "ended_at": iso(ended),
    }
