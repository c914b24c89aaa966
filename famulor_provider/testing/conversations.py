"""
Conversations: ``GET /user/conversations``, ``GET /conversations/{uuid}`` and the customers who write.

One conversation per sender number and customer number, as the API's send docs say. Sends create
and extend them (``MessagingMixin``), ``receive`` makes a customer write.

The listing order, the cursor and their cost: ``famulor_provider.testing.conversation_index``.
"""

from __future__ import annotations

import copy
import functools
import heapq
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

from famulor_provider.testing.conversation_index import (
    Conversation,
    ConversationIndex,
    decode_cursor,
    encode_cursor,
)
from famulor_provider.testing.replies import E164, json_reply, validation_error
from famulor_provider.testing.state import SESSION_MINUTES, SandboxState

if TYPE_CHECKING:
    import re
    from collections.abc import Iterable, Mapping

    from famulor_provider.testing.replies import Body, Query, Reply

CONVERSATION_TYPES = ("whatsapp", "widget", "api", "test")
DEFAULT_PER_PAGE = 15
MAX_PER_PAGE = 100
FIRST_CONVERSATION_RECORD = 501
"""The integer ``conversation_id`` of a send's answer is this plus the conversation's creation number."""
ROLES = ("user", "assistant")


class ConversationsMixin(SandboxState):
    """``receive``, ``schedule_receive``, ``add_conversation``, ``conversations`` and the two routes."""

    sends_in_history: bool
    customer_reply: tuple[str, float] | None
    request_rate_limit: float | None
    _conversation_index: ConversationIndex
    _scheduled_receives: list[tuple[float, int, float, dict[str, Any]]]  # heap: (due, n, wall time, kwargs)

    @property
    def conversations(self) -> list[dict[str, Any]]:
        """Every conversation (listing fields, ``external_identifier`` and ``history``), in creation order."""
        with self._lock:
            self._apply_due_receives()
            return [conversation.as_dict() for conversation in self._conversation_index.created]

    def receive(
        self,
        sender_phone: str,
        customer_phone: str,
        text: str,
        *,
        customer_name: str | None = None,
        assistant_reply: str | None = None,
    ) -> dict[str, Any]:
        """A customer writes ``text`` to a sender's number (creating the conversation if absent).

        The message opens the 24 h free-form window, as on WhatsApp.

        :param sender_phone: the ``phone_number`` of one of the sandbox's senders.
        :param customer_phone: the customer's number, E.164.
        :param text: the message.
        :param customer_name: the customer's name (kept when given).
        :param assistant_reply: an assistant message appended right after the customer's.
        :return: ``{"conversation_id": <uuid>, "message_index": <index of the message in history>}``.
        """
        with self._lock:
            self._apply_due_receives()
            return self._receive(
                sender_phone, customer_phone, text, customer_name, assistant_reply, time.time()
            )

    def schedule_receive(
        self,
        after_seconds: float,
        sender_phone: str,
        customer_phone: str,
        text: str,
        *,
        customer_name: str | None = None,
        assistant_reply: str | None = None,
    ) -> None:
        """``receive`` the same, ``after_seconds`` from now (``stop()`` cancels what is pending).

        The arguments are checked now. The message appears at its time for every request and
        every look at ``conversations`` (it applies lazily: no timer thread).

        :param after_seconds: the delay, at least 0.
        """
        if not after_seconds >= 0:
            raise ValueError(f"after_seconds must be at least 0, not {after_seconds!r}")
        kwargs = {
            "sender_phone": sender_phone,
            "customer_phone": customer_phone,
            "text": text,
            "customer_name": customer_name,
            "assistant_reply": assistant_reply,
        }
        with self._lock:
            self._sender_by_phone(sender_phone)
            _check_message(customer_phone, text, assistant_reply)
            due = (
                time.monotonic() + after_seconds,
                len(self._scheduled_receives),
                time.time() + after_seconds,
            )
            heapq.heappush(self._scheduled_receives, (*due, kwargs))

    def add_conversation(
        self,
        sender_phone: str,
        customer_phone: str,
        *,
        history: Iterable[Mapping[str, str]] = (),
        customer_name: str | None = None,
        variables: Mapping[str, Any] | None = None,
        external_identifier: str | None = None,
    ) -> str:
        """Add a conversation with its past history (for set-up; fast enough for 100,000).

        :param sender_phone: the ``phone_number`` of one of the sandbox's senders.
        :param customer_phone: the customer's number, E.164; one conversation per sender and customer.
        :param history: messages ``{"role": "user" | "assistant", "content": str}``, oldest first.
        :param customer_name: the customer's name.
        :param variables: the conversation's variables.
        :param external_identifier: the conversation's external identifier (a listing filter).
        :return: the conversation's uuid.
        """
        messages = [_message(m) for m in history]
        with self._lock:
            self._apply_due_receives()
            if (sender_phone, customer_phone) in self._conversation_index.by_pair:
                raise ValueError(f"A conversation between {sender_phone} and {customer_phone} already exists")
            _check_customer_phone(customer_phone)
            conversation = self._new_conversation(sender_phone, customer_phone, customer_name, time.time())
            conversation.history = messages
            conversation.variables = None if variables is None else copy.deepcopy(dict(variables))
            conversation.external_identifier = external_identifier
            return conversation.id

    # Used by the sends (the caller holds the lock)

    def _record_send(
        self, sender: Mapping[str, Any], phone: str, recipient_name: str | None, content: str
    ) -> int:
        """Add an accepted send to its conversation; the answer's integer ``conversation_id``."""
        now = time.time()
        conversation = self._conversation_index.by_pair.get((sender["phone_number"], phone))
        if conversation is None:
            conversation = self._new_conversation(sender["phone_number"], phone, recipient_name, now)
        if self.sends_in_history:
            conversation.history.append({"role": "assistant", "content": content})
            self._conversation_index.touch(conversation, now)
        if self.customer_reply is not None:
            text, after = self.customer_reply
            self.schedule_receive(after, sender["phone_number"], phone, text)
        return FIRST_CONVERSATION_RECORD + conversation.seq

    def _apply_due_receives(self) -> None:
        """Deliver the scheduled messages that are due, in order (the caller holds the lock)."""
        now = time.monotonic()
        while self._scheduled_receives and self._scheduled_receives[0][0] <= now:
            _, _, wall_time, kwargs = heapq.heappop(self._scheduled_receives)
            try:
                self._receive(**kwargs, when=wall_time)
            except ValueError:  # the sender was removed meanwhile: the message has nowhere to go
                continue

    def _receive(
        self,
        sender_phone: str,
        customer_phone: str,
        text: str,
        customer_name: str | None,
        assistant_reply: str | None,
        when: float,
    ) -> dict[str, Any]:
        sender = self._sender_by_phone(sender_phone)
        _check_message(customer_phone, text, assistant_reply)
        index = self._conversation_index
        conversation = index.by_pair.get((sender_phone, customer_phone))
        if conversation is None:
            conversation = self._new_conversation(sender_phone, customer_phone, customer_name, when)
        elif customer_name is not None:
            conversation.customer_name = customer_name
        conversation.history.append({"role": "user", "content": text})
        message_index = len(conversation.history) - 1
        if assistant_reply is not None:
            conversation.history.append({"role": "assistant", "content": assistant_reply})
        index.touch(conversation, when)
        self._sessions[(int(sender["id"]), customer_phone)] = when + SESSION_MINUTES * 60
        return {"conversation_id": conversation.id, "message_index": message_index}

    def _new_conversation(
        self, sender_phone: str, customer_phone: str, customer_name: str | None, when: float
    ) -> Conversation:
        sender = self._sender_by_phone(sender_phone)
        name = sender.get("display_name")
        conversation = Conversation(
            seq=len(self._conversation_index.created),
            id=_uuid4(),
            sender_phone=sender_phone,
            sender_name=name,
            assistant_id=_assistant_id(sender_phone),
            assistant_name=f"{name or sender_phone} Assistant",
            customer_phone=customer_phone,
            customer_name=customer_name,
            variables=None,
            external_identifier=None,
            created_at=when,
            updated_at=when,
        )
        self._conversation_index.add(conversation)
        return conversation

    def _sender_by_phone(self, phone: str) -> dict[str, Any]:
        for sender in self._senders.values():
            if sender.get("phone_number") == phone:
                return sender
        known = sorted(str(s.get("phone_number")) for s in self._senders.values())
        raise ValueError(f"sender_phone {phone!r} is not the phone_number of any sender; known: {known}")

    # The routes

    def _list_conversations(self, match: re.Match[str], query: Query, body: Body) -> Reply:
        errors: dict[str, list[str]] = {}
        per_page = _per_page(query.get("per_page"), errors)
        kind = query.get("type") or None
        if kind is not None and kind not in CONVERSATION_TYPES:
            errors["type"] = ["The selected type is invalid."]
        cursor = None
        if query.get("cursor"):
            try:
                cursor = decode_cursor(query["cursor"])
            except ValueError as exc:
                errors["cursor"] = [str(exc)]
        if errors:
            return validation_error(errors)
        exact = {
            name: query[name]
            for name in ("assistant_id", "whatsapp_sender_phone", "external_identifier")
            if query.get(name)
        }

        def accepts(c: Conversation) -> bool:
            values = {
                "assistant_id": c.assistant_id,
                "whatsapp_sender_phone": c.sender_phone,
                "external_identifier": c.external_identifier,
            }
            return all(values[name] == value for name, value in exact.items())

        with self._lock:
            found: list[Conversation] = []
            more = False
            if kind in (None, "whatsapp"):  # every sandbox conversation is a WhatsApp one
                index = self._conversation_index
                filtered = accepts if exact else None
                found, more = index.page(per_page, cursor, query.get("customer_phone") or None, filtered)
            data = [c.listing_item() for c in found]
            keys = [self._conversation_index.key(c) for c in (found[:1] + found[-1:])]
        forward = cursor is None or cursor[1]
        has_next = more if forward else bool(found)
        has_prev = (cursor is not None and bool(found)) if forward else more
        payload = {
            "data": data,
            "path": f"{self.base_url}/user/conversations",
            "per_page": per_page,
            "next_cursor": encode_cursor(keys[-1], True) if has_next else None,
            "prev_cursor": encode_cursor(keys[0], False) if has_prev else None,
        }
        return json_reply(200, payload)

    def _get_conversation(self, match: re.Match[str], query: Query, body: Body) -> Reply:
        with self._lock:
            conversation = self._conversation_index.by_id.get(match.group(1))
            if conversation is None:
                return json_reply(404, {"status": False, "error": "Conversation not found"})
            return json_reply(200, conversation.read())


def _uuid4() -> str:
    """A random (version 4) uuid, as ``str(uuid.uuid4())`` but three times faster (not for secrets)."""
    bits = random.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@functools.lru_cache(maxsize=256)
def _assistant_id(sender_phone: str) -> str:
    """The id of a sender's assistant: the same for every conversation of the sender."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"famulor-sandbox:assistant:{sender_phone}"))


def _per_page(value: str | None, errors: dict[str, list[str]]) -> int:
    if value is None or value == "":
        return DEFAULT_PER_PAGE
    if not value.lstrip("-").isdigit():
        errors["per_page"] = ["The per page field must be an integer."]
    elif int(value) < 1:
        errors["per_page"] = ["The per page field must be at least 1."]
    elif int(value) > MAX_PER_PAGE:
        errors["per_page"] = [f"The per page field must not be greater than {MAX_PER_PAGE}."]
    else:
        return int(value)
    return DEFAULT_PER_PAGE


def _check_customer_phone(customer_phone: str) -> None:
    if not isinstance(customer_phone, str) or not E164.fullmatch(customer_phone):
        raise ValueError(
            f"customer_phone must be an E.164 number such as +4915112345678, not {customer_phone!r}"
        )


def _check_message(customer_phone: str, text: str, assistant_reply: str | None) -> None:
    _check_customer_phone(customer_phone)
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, not {text!r}")
    if assistant_reply is not None and (not isinstance(assistant_reply, str) or not assistant_reply):
        raise ValueError(f"assistant_reply must be a non-empty string or None, not {assistant_reply!r}")


def _message(message: Mapping[str, str]) -> dict[str, str]:
    role, content = message.get("role"), message.get("content")
    if role not in ROLES or not isinstance(content, str):
        raise ValueError(
            f"history entries must be {{'role': 'user' | 'assistant', 'content': str}}, not {dict(message)!r}"
        )
    return {"role": role, "content": content}
