"""
The sandbox's conversations, kept sorted for ``GET /user/conversations`` in one of four orders.

The listing walks one index kept sorted by the order key, never sorting per request:
``created_asc`` / ``created_desc`` walk the creation list; ``updated_desc`` a list of activity
ticks (ascending, so a touched conversation moves by one deletion and one ``append``);
``shuffled`` a fixed permutation of the creation numbers (sorted lazily once after additions).
A ``customer_phone`` filter walks only that customer's conversations; the other filters skip
what they reject while walking. A page is found by a bisection, so its cost does not grow with
the account. With 100,000 conversations (``python benchmarks/sandbox_conversations.py``, on a
shared 2-core machine): finding a page of 100
takes about 0.03 ms in-process, against 22 ms (150 ms shuffled) to sort them per request, and
the whole HTTP answer 3 to 9 ms; ``add_conversation`` takes about 20 us (2 s for 100,000).

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
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

CONVERSATION_ORDERS = ("updated_desc", "created_asc", "created_desc", "shuffled")
"""The listing orders of ``FamulorSandbox(conversation_order=...)``; the API documents none."""

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
        if self.order == "shuffled":
            self._shuffled.append(self.key(conversation))
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
