"""Famulor domain types: WhatsApp senders and the values of their fields.

Field names are the API's own. Unknown status and quality strings are kept as they are:
the API adds values (``connecting``, ``NA``, ...) that a provider release cannot foresee.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from famulor_provider.exceptions import FamulorResponseError


class SenderStatus:
    """Documented sender statuses; others (``connecting``, ``suspended``, ...) may appear."""

    ONLINE = "online"
    OFFLINE = "offline"
    ALL = "all"  # the query value that lists every sender, not a status


class QualityRating:
    """Meta's quality ratings; ``None`` means the sender is not rated yet."""

    GREEN = "GREEN"
    YELLOW = "YELLOW"
    RED = "RED"
    NA = "NA"
    UNKNOWN = "UNKNOWN"
    UNRATED = frozenset({NA, UNKNOWN, None})

    # Best first, for ordering senders by capacity; unknown strings rank as unrated.
    RANK: Mapping[str | None, int] = {GREEN: 0, YELLOW: 1, NA: 2, UNKNOWN: 2, None: 2, RED: 3}


def _as_int(value: Any, field: str, *, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise FamulorResponseError(f"Famulor sent a sender with a non-integer {field!r}: {value!r}")


@dataclass(frozen=True)
class WhatsAppSender:
    """A WhatsApp Business sender (phone number); ``id`` is the ``sender_id`` that sends take.

    ``messaging_limit`` is unique recipients per 24 h; ``None`` means unlimited.
    """

    id: int
    phone_number: str
    display_name: str | None
    status: str | None
    quality_rating: str | None
    messaging_limit: int | None
    messaging_limit_formatted: str | None

    @classmethod
    def from_api(cls, item: Any) -> WhatsAppSender:
        """Build a sender from one item of the API's ``data`` list; extra fields are ignored."""
        if not isinstance(item, Mapping) or item.get("id") is None:
            raise FamulorResponseError(f"Famulor sent a sender without an 'id': {type(item).__name__}")
        return cls(
            id=_as_int(item["id"], "id", nullable=False),  # type: ignore[arg-type]
            phone_number=str(item.get("phone_number") or ""),
            display_name=item.get("display_name"),
            status=item.get("status"),
            quality_rating=item.get("quality_rating"),
            messaging_limit=_as_int(item.get("messaging_limit"), "messaging_limit", nullable=True),
            messaging_limit_formatted=item.get("messaging_limit_formatted"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-native dict with the API's keys (what goes to XCom)."""
        return asdict(self)

    @property
    def is_online(self) -> bool:
        return (self.status or "").lower() == SenderStatus.ONLINE

    def has_capacity(self, min_messaging_limit: int | None) -> bool:
        """Whether the 24 h limit is at least ``min_messaging_limit`` (unlimited always is)."""
        if min_messaging_limit is None or self.messaging_limit is None:
            return True
        return self.messaging_limit >= min_messaging_limit


def normalize_phone(phone: str) -> str:
    """Drop the separators people write in phone numbers: ``+1 (415) 555-1234`` -> ``+14155551234``."""
    return re.sub(r"[\s().-]", "", phone)


def _normalize_rating(rating: str | None) -> str | None:
    return rating.upper() if isinstance(rating, str) else None


def select_senders(
    senders: Iterable[WhatsAppSender],
    *,
    online_only: bool = False,
    quality_ratings: Iterable[str | None] | None = None,
    min_messaging_limit: int | None = None,
    sender_ids: Iterable[int] | None = None,
    phone_numbers: Iterable[str] | None = None,
) -> list[WhatsAppSender]:
    """Keep the senders that meet every given criterion (``None`` = no constraint); order is kept."""
    ratings = None if quality_ratings is None else {_normalize_rating(r) for r in quality_ratings}
    ids = None if sender_ids is None else set(sender_ids)
    phones = None if phone_numbers is None else {normalize_phone(p) for p in phone_numbers}
    return [
        s
        for s in senders
        if (not online_only or s.is_online)
        and (ratings is None or _normalize_rating(s.quality_rating) in ratings)
        and s.has_capacity(min_messaging_limit)
        and (ids is None or s.id in ids)
        and (phones is None or normalize_phone(s.phone_number) in phones)
    ]


def capacity_key(sender: WhatsAppSender) -> tuple[int, int, float]:
    """Sort key, best first: online, then GREEN > YELLOW > unrated > RED, then the larger limit."""
    rank = QualityRating.RANK.get(_normalize_rating(sender.quality_rating), 2)
    limit = float("inf") if sender.messaging_limit is None else sender.messaging_limit
    return (0 if sender.is_online else 1, rank, -limit)


def order_by_capacity(senders: Iterable[WhatsAppSender]) -> list[WhatsAppSender]:
    """Best sender first (see ``capacity_key``); ties keep the API's order."""
    return sorted(senders, key=capacity_key)
