"""The WhatsApp part of the Classic API: the account, senders, templates, sends and sessions."""

from __future__ import annotations

import copy
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any

from famulor_provider.testing.conversations import ConversationsMixin
from famulor_provider.testing.faults import FAULTS_AFTER_ACCEPT, SEND_FAULTS, FaultsMixin
from famulor_provider.testing.replies import (
    INVALID_PHONE,
    Body,
    Query,
    Reply,
    check_phone,
    error_reply,
    int_field,
    iso,
    json_reply,
    session_expired,
    str_field,
    validation_error,
)
from famulor_provider.testing.state import SESSION_MINUTES, default_templates
from famulor_provider.testing.webhooks import WebhooksMixin

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Iterable, Mapping


WHATSAPP_MESSAGE_ID_OFFSET = 6000
"""A send's ``whatsapp_message_id`` is its ``message_id`` plus this: two different integers, as in the API."""


def format_limit(limit: int | None) -> str:
    return "Unlimited" if limit is None else f"{limit:,} / 24hr"


def fill_template(body_text: str, variables: Any) -> str:
    """The template's text as the customer reads it: ``{{1}}`` or ``{{name}}`` replaced by its value.

    :param body_text: the template's ``body_text``.
    :param variables: ``{"1": ...}`` or named keys, or a list (``{{1}}`` is its first item).
    """
    if isinstance(variables, list):
        variables = {str(n): value for n, value in enumerate(variables, start=1)}
    values = variables if isinstance(variables, dict) else {}
    return re.sub(r"\{\{\s*([^}\s]+)\s*\}\}", lambda m: str(values.get(m.group(1), m.group(0))), body_text)


def with_formatted_limit(sender: dict[str, Any]) -> dict[str, Any]:
    sender.setdefault("messaging_limit", None)
    sender.setdefault("messaging_limit_formatted", format_limit(sender["messaging_limit"]))
    return sender


class MessagingMixin(ConversationsMixin, FaultsMixin, WebhooksMixin):
    """Senders and their templates (set up and changed by tests), and the routes that use them."""

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
        new = with_formatted_limit(dict(sender))
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
            sender["messaging_limit_formatted"] = format_limit(sender["messaging_limit"])

    # The Classic API

    def _me(self, match: re.Match[str], query: Query, body: Body) -> Reply:
        return json_reply(
            200, {"name": "Sandbox User", "email": "sandbox@example.com", "total_balance": 248.75}
        )

    def _list_senders(self, match: re.Match[str], query: Query, body: Body) -> Reply:
        # The documented filter values; "all" also shows dashboard-only states such as "connecting".
        status = query.get("status") or "online"
        if status not in ("online", "offline", "all"):
            return validation_error({"status": ["The selected status is invalid."]})
        with self._lock:
            data = [s for s in self._senders.values() if status == "all" or s.get("status") == status]
            return json_reply(200, {"data": data})

    def _list_templates(self, match: re.Match[str], query: Query, body: Body) -> Reply:
        status = query.get("status") or "approved"
        if status not in ("approved", "all"):
            return validation_error({"status": ["The selected status is invalid."]})
        with self._lock:
            templates = self._templates.get(int(match.group(1)))
            if templates is None:
                return error_reply(404, "SENDER_NOT_FOUND", "Sender not found")
            data = [t for t in templates if status == "all" or t.get("status") == "approved"]
            return json_reply(200, {"data": data})

    def _send_template(self, match: re.Match[str], query: Query, body: Body) -> Reply | None:
        errors: dict[str, list[str]] = {}
        sender_id = int_field(body, "sender_id", errors)
        template_id = int_field(body, "template_id", errors)
        phone = str_field(body, "recipient_phone", errors, max_len=32)
        name = str_field(body, "recipient_name", errors, max_len=255, required=False)
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, (dict, list)):
            errors["variables"] = ["The variables field must be an array."]
        if errors:
            return validation_error(errors)
        assert sender_id is not None and template_id is not None and phone is not None
        return self._send(
            "/user/whatsapp/send",
            sender_id,
            phone,
            template_id=template_id,
            recipient_name=name,
            variables=variables or {},
        )

    def _send_freeform(self, match: re.Match[str], query: Query, body: Body) -> Reply | None:
        errors: dict[str, list[str]] = {}
        sender_id = int_field(body, "sender_id", errors)
        phone = str_field(body, "recipient_phone", errors, max_len=32)
        message = str_field(body, "message", errors, max_len=4096)
        if errors:
            return validation_error(errors)
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
    ) -> Reply | None:
        """Check, bill and record one template (``template_id``) or free-form (``message``) send."""
        freeform = message is not None
        kinds = SEND_FAULTS if freeform else SEND_FAULTS - {"session_expired"}
        fault = self._take_fault(kinds, path, phone)
        if fault is not None and not self._wait(fault.delay):
            return None
        offline_status = 503 if freeform else 422  # the API's own inconsistency, per its docs
        if fault is not None and fault.fault == "insufficient_balance":
            return error_reply(
                402, "INSUFFICIENT_BALANCE", "Insufficient balance. Please top up your account."
            )
        if fault is not None and fault.fault == "sender_offline":
            return error_reply(offline_status, "SENDER_OFFLINE", "The WhatsApp sender is offline")
        if fault is not None and fault.fault == "invalid_phone":
            return error_reply(422, "INVALID_PHONE", INVALID_PHONE)
        if fault is not None and fault.fault == "session_expired":
            return session_expired()
        with self._lock:
            sender = self._senders.get(sender_id)
            if sender is None:
                return error_reply(404, "SENDER_NOT_FOUND", "Sender not found")
            if sender.get("status") != "online":
                return error_reply(offline_status, "SENDER_OFFLINE", "The WhatsApp sender is offline")
            content = message
            if not freeform:
                template = next((t for t in self._templates[sender_id] if t.get("id") == template_id), None)
                if template is None:
                    return error_reply(404, "TEMPLATE_NOT_FOUND", "Template not found")
                if template.get("status") != "approved":
                    return error_reply(422, "TEMPLATE_NOT_APPROVED", "Template is not approved by WhatsApp")
                content = fill_template(str(template.get("body_text") or ""), variables)
            phone_error = check_phone(phone)
            if phone_error is not None:
                return phone_error
            key = (sender_id, phone)
            if freeform and self._sessions.get(key, 0) <= time.time():
                return session_expired()
            if not freeform:
                # The brief's simplification: an accepted template opens the 24 h window.
                self._sessions[key] = time.time() + SESSION_MINUTES * 60
            assert content is not None
            conversation_id = self._record_send(sender, phone, recipient_name, content)
            conversation = self._conversation_index.by_pair[(sender["phone_number"], phone)]
            message_id = self._next_message_id
            self._next_message_id += 1
            # The documented answer: an integer whatsapp_message_id (the WhatsApp message record, not
            # the conversation message record message_id); Meta's wamid is only in the receipts.
            whatsapp_message_id = WHATSAPP_MESSAGE_ID_OFFSET + message_id
            message_sid = f"SM{message_id:032x}"
            meta_message_id = f"wamid.SANDBOX{message_id:012d}"
            self._record_message(
                {
                    "message_id": message_id,
                    "whatsapp_message_id": whatsapp_message_id,
                    "meta_message_id": meta_message_id,
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
            self._queue_receipts(
                sender,
                phone,
                whatsapp_message_id=whatsapp_message_id,
                message_sid=message_sid,
                meta_message_id=meta_message_id,
                conversation_uuid=conversation.id,
                assistant_id=conversation.assistant_id,
            )
        fault = self._take_fault(FAULTS_AFTER_ACCEPT, path, phone)
        if fault is not None and (not self._wait(fault.delay) or fault.fault == "accept_then_drop"):
            return None  # billed, but the client never learns it
        return json_reply(
            200,
            {
                "success": True,
                "conversation_id": conversation_id,
                "message_id": message_id,
                "whatsapp_message_id": whatsapp_message_id,
                "message_sid": message_sid,
                "status": "queued",
            },
        )

    def _record_message(self, entry: dict[str, Any]) -> None:
        """Bill one message (the caller holds the lock)."""
        self._ledger.append(json.dumps(entry).encode())

    def _throttle(self) -> int | None:
        """Count one send against the limit; the seconds to wait (``Retry-After``) when over it."""
        return self._take_slot(self._send_times, self.send_rate_limit, 1.0)

    def _throttle_reads(self) -> int | None:
        """Count one read (GET) against ``request_rate_limit`` per minute, when it is set."""
        return self._take_slot(self._read_times, self.request_rate_limit, 60.0)

    def _take_slot(self, times: deque[float], limit: float | None, per_seconds: float) -> int | None:
        """Count one request in a window of ``limit`` per ``per_seconds``; ``Retry-After`` when over."""
        if not limit:
            return None
        # One key is ever authorized, so "per account" is a single rolling window. Like Laravel's
        # throttle, a refused attempt does not count.
        capacity = max(1, int(limit))
        window = per_seconds * capacity / limit
        with self._lock:
            now = time.monotonic()
            while times and times[0] <= now - window:
                times.popleft()
            if len(times) >= capacity:
                return max(1, math.ceil(times[-capacity] + window - now))
            times.append(now)
            return None

    def _session_status(self, match: re.Match[str], query: Query, body: Body) -> Reply:
        errors: dict[str, list[str]] = {}
        sender_id = int_field(query, "sender_id", errors)
        phone = str_field(query, "recipient_phone", errors, max_len=32)
        if errors:
            return validation_error(errors)
        assert sender_id is not None and phone is not None
        with self._lock:
            if sender_id not in self._senders:
                return error_reply(404, "SENDER_NOT_FOUND", "Sender not found")
            phone_error = check_phone(phone)
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
                "expires_at": iso(expires),
                "message": "Session is open. You can send free-form messages.",
            }
        else:
            status = {
                "is_open": False,
                "can_send_freeform": False,
                "requires_template": True,
                "minutes_remaining": 0,
                "expired_at": iso(expires),
                "message": "Session expired. Send a template message to reopen the conversation.",
            }
        payload = {"success": True, "has_conversation": expires is not None, "session_status": status}
        return json_reply(200, payload)
