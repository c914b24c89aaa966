"""
Conversations: ``GET /user/conversations``, ``GET /conversations/{uuid}`` and the customers who write.

One conversation per sender number and customer number, as the API's send docs say. Sends create
and extend them (``MessagingMixin``), ``receive`` makes a customer write.

The listing walks one index kept sorted by the order key, never sorting per request:
``created_asc`` / ``created_desc`` walk the creation list; ``updated_desc`` a list of activity
ticks (ascending, so a touched conversation moves by one ``pop`` and one ``append``);
``shuffled`` a fixed permutation of the creation numbers (sorted lazily once after additions).
A ``customer_phone`` filter walks only that customer's conversations. A page is found by a
bisection, so its cost does not grow with the account: with 100,000 conversations a page of
100 takes about 1 ms and ``add_conversation`` about 10 us each (1.1 s for 100,000), measured by
``python benchmarks/sandbox_conversations.py``.

The cursor is a keyset cursor, as Laravel's ``cursorPaginate``: it holds the order key of the
page's last (``next_cursor``) or first (``prev_cursor``) item, and the next page starts right
after that key in the current order. A walk is therefore stable while messages arrive; in
``updated_desc`` order a conversation that gets a message mid-walk moves to the front of the
listing, so that walk misses it if it had not reached it yet (never shows it twice); the next
walk sees it first. The other orders do not move.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import heapq
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from famulor_provider.testing.replies import E164, json_reply, validation_error
from famulor_provider.testing.state import SESSION_MINUTES, SandboxState

if TYPE_CHECKING:
    import re
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from famulor_provider.testing.replies import Body, Query, Reply

CONVERSATION_ORDERS = ("updated_desc", "created_asc", "created_desc", "shuffled")
"""The listing orders of ``FamulorSandbox(conversation_order=...)``; the API documents none."""
CONVERSATION_TYPES = ("whatsapp", "widget", "api", "test")
DEFAULT_PER_PAGE = 15
MAX_PER_PAGE = 100
FIRST_CONVERSATION_RECORD = 501
"""The integer ``conversation_id`` of a send's answer is this plus the conversation's creation number."""
ROLES = ("user", "assistant")

_MASK = (1 << 64) - 1
_SHUFFLE = 0x9E3779B97F4A7C15  # odd, so multiplying by it modulo 2**64 is a permutation
_UNSHUFFLE = pow(_SHUFFLE, -1, 1 << 64)


@dataclass(slots=True)
class Conversation:
    """One WhatsApp conversation as the sandbox stores it."""

    seq: int
    id: str
    sender_phone: str
    sender_name: str | None
    assistant_id: str
    assistant_name: str
    customer_phone: str
    customer_name: str | None
    variables: dict[str, Any] | None
    external_identifier: str | None
    created_at: float
    updated_at: float
    tick: int = 0
    history: list[dict[str, str]] = field(default_factory=list)

    def listing_item(self) -> dict[str, Any]:
        """The conversation as ``GET /user/conversations`` lists it."""
        return {
            "id": self.id,
            "assistant_id": self.assistant_id,
            "assistant_name": self.assistant_name,
            "type": "whatsapp",
            "variables": copy.deepcopy(self.variables),
            "message_count": len(self.history),
            "total_cost": round(0.0004 * len(self.history), 4),
            "ai_enabled": False,
            "created_at": _api_time(self.created_at),
            "updated_at": _api_time(self.updated_at),
            "whatsapp_sender": {"name": self.sender_name, "phone": self.sender_phone},
            "customer": {"name": self.customer_name, "phone": self.customer_phone},
        }

    def read(self) -> dict[str, Any]:
        """The conversation as ``GET /conversations/{uuid}`` answers it."""
        answer: dict[str, Any] = {
            "status": True,
            "history": [dict(message) for message in self.history],
            "variables": copy.deepcopy(self.variables),
            "whatsapp_sender": {"name": self.sender_name, "phone": self.sender_phone},
            "customer": {"name": self.customer_name, "phone": self.customer_phone},
        }
        if self.external_identifier is not None:
            answer["external_identifier"] = self.external_identifier
        return answer

    def as_dict(self) -> dict[str, Any]:
        """Everything: the listing item plus ``history`` and ``external_identifier``."""
        return {
            **self.listing_item(),
            "external_identifier": self.external_identifier,
            "history": [dict(message) for message in self.history],
        }


def _api_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def encode_cursor(key: int, points_to_next: bool) -> str:
    """An opaque cursor, shaped like Laravel's (url-safe base64 of a JSON object, no padding).

    :param key: the order key of the item the page starts after (or ends before).
    :param points_to_next: ``True`` for a ``next_cursor``, ``False`` for a ``prev_cursor``.
    """
    raw = json.dumps({"key": key, "_pointsToNextItems": points_to_next}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, bool]:
    """``(key, points_to_next)``; ``ValueError`` for anything ``encode_cursor`` did not make.

    :param cursor: the ``cursor`` query parameter.
    """
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise ValueError("The cursor is invalid.") from None
    key, points_to_next = (
        (data.get("key"), data.get("_pointsToNextItems")) if isinstance(data, dict) else (0, 0)
    )
    if type(key) is not int or type(points_to_next) is not bool:
        raise ValueError("The cursor is invalid.")
    return key, points_to_next


class ConversationIndex:
    """The conversations, findable by uuid, by (sender, customer) and page by page in one order.

    :param order: one of ``CONVERSATION_ORDERS``.
    """

    def __init__(self, order: str) -> None:
        if order not in CONVERSATION_ORDERS:
            raise ValueError(f"conversation_order must be one of {CONVERSATION_ORDERS}, not {order!r}")
        self.order = order
        self.created: list[Conversation] = []  # creation order: created[c.seq] is c
        self.by_id: dict[str, Conversation] = {}
        self.by_pair: dict[tuple[str, str], Conversation] = {}
        self.by_customer: dict[str, list[Conversation]] = {}
        self._ticks: list[int] = []  # activity ticks, ascending (updated_desc)
        self._by_tick: dict[int, Conversation] = {}
        self._shuffled: list[int] = []  # shuffled keys, sorted lazily
        self._shuffled_sorted = True
        self._next_tick = 0

    def add(self, conversation: Conversation) -> None:
        """Store a new conversation (its ``seq`` must be ``len(created)``).

        :param conversation: the conversation.
        """
        self.created.append(conversation)
        self.by_id[conversation.id] = conversation
        self.by_pair[(conversation.sender_phone, conversation.customer_phone)] = conversation
        self.by_customer.setdefault(conversation.customer_phone, []).append(conversation)
        conversation.tick = self._next_tick
        self._next_tick += 1
        self._ticks.append(conversation.tick)
        self._by_tick[conversation.tick] = conversation
        self._shuffled.append(self.key(conversation) if self.order == "shuffled" else 0)
        self._shuffled_sorted = False

    def touch(self, conversation: Conversation, when: float) -> None:
        """Mark the conversation active now: it moves to the front of the ``updated_desc`` order.

        :param conversation: the conversation.
        :param when: the new ``updated_at`` (epoch seconds).
        """
        conversation.updated_at = when
        del self._ticks[bisect.bisect_left(self._ticks, conversation.tick)]
        del self._by_tick[conversation.tick]
        conversation.tick = self._next_tick
        self._next_tick += 1
        self._ticks.append(conversation.tick)
        self._by_tick[conversation.tick] = conversation

    def key(self, conversation: Conversation) -> int:
        """The conversation's order key (listed ascending or, for ``*_desc``, descending).

        :param conversation: the conversation.
        """
        if self.order == "updated_desc":
            return conversation.tick
        if self.order == "shuffled":
            return (conversation.seq * _SHUFFLE) & _MASK
        return conversation.seq

    def page(
        self,
        per_page: int,
        cursor: tuple[int, bool] | None = None,
        customer_phone: str | None = None,
        match: Callable[[Conversation], bool] | None = None,
    ) -> tuple[list[Conversation], bool]:
        """One page in listing order, and whether more items lie beyond it in the walk's direction.

        :param per_page: the page size.
        :param cursor: ``(key, points_to_next)`` from ``decode_cursor``; ``None`` for the first page.
        :param customer_phone: only this customer's conversations.
        :param match: only the conversations it accepts.
        """
        keys, lookup = self._keys(customer_phone)
        descending = self.order in ("updated_desc", "created_desc")
        forward = cursor is None or cursor[1]  # the walk's direction in listing order
        step = 1 if forward != descending else -1
        if cursor is None:
            start = len(keys) - 1 if descending else 0
        elif step == 1:
            start = bisect.bisect_right(keys, cursor[0])
        else:
            start = bisect.bisect_left(keys, cursor[0]) - 1
        found: list[Conversation] = []
        position = start
        while 0 <= position < len(keys) and len(found) <= per_page:
            conversation = lookup(keys[position])
            if match is None or match(conversation):
                found.append(conversation)
            position += step
        more = len(found) > per_page
        found = found[:per_page]
        return (found if forward else found[::-1]), more

    def _keys(self, customer_phone: str | None) -> tuple[Sequence[int], Callable[[int], Conversation]]:
        if customer_phone is not None:
            mine = {self.key(c): c for c in self.by_customer.get(customer_phone, ())}
            return sorted(mine), mine.__getitem__
        if self.order == "updated_desc":
            return self._ticks, self._by_tick.__getitem__
        if self.order == "shuffled":
            if not self._shuffled_sorted:
                self._shuffled.sort()
                self._shuffled_sorted = True
            return self._shuffled, lambda key: self.created[(key * _UNSHUFFLE) & _MASK]
        return range(len(self.created)), self.created.__getitem__


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
            id=str(uuid.uuid4()),
            sender_phone=sender_phone,
            sender_name=name,
            assistant_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"famulor-sandbox:assistant:{sender_phone}")),
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
