"""Delivery receipts read back from the ``famulor.<conn_id>.message_status`` asset (Airflow 3.1+).

A task reads the asset's events through the Task SDK (``context["inlet_events"][asset]``: the
asset must be one of the task's ``inlets``), in pages of :data:`PAGE_SIZE` in time order, and
:class:`ReceiptBook` folds them into the latest status of each awaited message:

- statuses only move forward (``sent`` < ``delivered`` < ``read``; ``failed`` and
  ``undelivered`` end a message), so a late or repeated event never moves a message back;
- an event whose ``dedupe_key`` (``<whatsapp_message_id>:<status>``) was already folded is a
  duplicate (Famulor's retries, the receiver's at-least-once) and is skipped;
- the settings' test events (``test: true``) and events of other messages are skipped.

Triggers cannot read asset events (the triggerer's supervisor answers no asset-event requests),
so the consumers run on workers, in reschedule mode by default.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from famulor_provider.webhooks.assets import EXTRA_PAYLOAD

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

SENT = "sent"
DELIVERED = "delivered"
READ = "read"
FAILED = "failed"
UNDELIVERED = "undelivered"
NO_RECEIPT = "no_receipt"
"""Not a webhook status: the send was accepted and no receipt has arrived yet."""
STATUSES = (SENT, DELIVERED, READ, FAILED, UNDELIVERED)
FAILURES = frozenset({FAILED, UNDELIVERED})
UNTIL_CHOICES = (DELIVERED, READ)
_RANK = {SENT: 1, DELIVERED: 2, READ: 3, FAILED: 4, UNDELIVERED: 4}
_BIT = {status: 1 << i for i, status in enumerate(STATUSES)}

PAGE_SIZE = 1000
"""Events per request to the execution API (one page in memory at a time)."""
SINCE_MARGIN = timedelta(minutes=5)
"""Read events from this long before the earliest send: clocks of hosts differ, and a receipt may
be committed before the send's answer reached the worker."""


def require_airflow_3_1(what: str) -> None:
    """Refuse on Airflow before 3.1: no FastAPI plugins (so no receiver) and no asset-event reads.

    :param what: the class or function, for the message.
    """
    version = importlib.metadata.version("apache-airflow")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < (3, 1):
        raise RuntimeError(
            f"{what} needs Airflow 3.1 or later (this is Airflow {version}): Famulor's delivery receipts "
            "reach Airflow through the provider's api-server plugin and are read back as asset events, "
            "and Airflow 2 has neither. On Airflow 2.11 no delivery status is known; see the README's "
            "'Knowing what happened after a send'."
        )


def message_key(value: Any) -> str | None:
    """A ``whatsapp_message_id`` as a lookup key: ``123``, ``"123"`` and ``123.0`` are the same message.

    :param value: the id from a send's answer, a ledger line or a webhook.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


@dataclass
class Receipt:
    """The latest status of one message, from its delivery receipts."""

    status: str
    error_code: Any = None
    error_message: str | None = None
    error_description: str | None = None
    at: str | None = None

    @property
    def failed(self) -> bool:
        return self.status in FAILURES

    def reached(self, until: str) -> bool:
        """Whether the message got at least to ``until`` (``delivered`` or ``read``)."""
        return not self.failed and _RANK[self.status] >= _RANK[until]

    def description(self) -> str:
        """``undelivered, error 63016: <description>`` (the provider's words, no personal data)."""
        text = self.status
        if self.error_code is not None:
            text += f", error {self.error_code}"
        detail = self.error_description or self.error_message
        return f"{text}: {detail}" if detail else text


@dataclass
class ReceiptBook:
    """The latest receipt of each awaited message, folded from the asset's events in time order.

    :param message_ids: the awaited messages (``whatsapp_message_id``); ``None`` keeps every one.
    """

    message_ids: Iterable[Any] | None = None
    receipts: dict[str, Receipt] = field(default_factory=dict)
    events: int = 0
    duplicates: int = 0
    cursor: datetime | None = None
    _cursor_ids: set[int] = field(default_factory=set)
    _seen: dict[str, int] = field(default_factory=dict)  # message -> bits of the statuses folded

    def __post_init__(self) -> None:
        ids = self.message_ids
        self._wanted = None if ids is None else {k for k in map(message_key, ids) if k is not None}

    def add(self, extra: Mapping[str, Any] | None) -> bool:
        """Fold one event's ``extra``; returns whether it changed a receipt.

        :param extra: ``{"payload": <the webhook>, "dedupe_key": ...}``.
        """
        payload = (extra or {}).get(EXTRA_PAYLOAD)
        if not isinstance(payload, dict) or payload.get("test") is True:
            return False
        key = message_key(payload.get("whatsapp_message_id"))
        status = payload.get("status")
        if key is None or status not in _BIT or (self._wanted is not None and key not in self._wanted):
            return False
        bits = self._seen.get(key, 0)
        if bits & _BIT[status]:  # this dedupe_key was folded already
            self.duplicates += 1
            return False
        self._seen[key] = bits | _BIT[status]
        current = self.receipts.get(key)
        if current is not None and (current.failed or _RANK[status] <= _RANK[current.status]):
            return False  # a late event: statuses only move forward
        self.receipts[key] = Receipt(
            status=status,
            error_code=payload.get("error_code"),
            error_message=payload.get("error_message"),
            error_description=payload.get("error_description"),
            at=payload.get("provider_timestamp") or payload.get("timestamp"),
        )
        return True

    def read(self, accessor: Any, since: datetime) -> int:
        """Fold every event of ``accessor`` from ``since`` (or where the last read ended); returns
        how many events were read.

        ``after`` is inclusive and orders by time only, so the ids read at the cursor's time are
        kept to skip them on the next page; a page of one instant only is read again, larger.
        Airflow 3.1's accessor is a plain list of every event of the asset (no time filter): it
        is read whole and filtered here.

        :param accessor: ``context["inlet_events"][message_status_asset(conn_id)]``.
        :param since: the earliest time a receipt of these messages can have (UTC).
        """
        cursor = since if self.cursor is None or self.cursor < since else self.cursor
        if not hasattr(accessor, "after"):  # Airflow 3.1: a list of every event of the asset
            page = sorted(
                (e for e in accessor if e.timestamp >= cursor and e.id not in self._cursor_ids),
                key=lambda e: (e.timestamp, e.id),
            )
            for event in page:
                self.add(event.extra)
            if page:
                self._move_cursor(page)
            self.events += len(page)
            return len(page)
        size, read = PAGE_SIZE, 0
        while True:
            page = list(accessor.after(cursor).ascending(True).limit(size))
            fresh = [e for e in page if e.id not in self._cursor_ids]
            for event in fresh:
                self.add(event.extra)
            read += len(fresh)
            if page:
                self._move_cursor(page)
            if len(page) < size:
                break
            if self.cursor == cursor:  # the whole page is one instant: read more of it
                size *= 2
            else:
                cursor, size = self.cursor, PAGE_SIZE  # type: ignore[assignment]
        self.events += read
        return read

    def _move_cursor(self, page: list[Any]) -> None:
        last = page[-1].timestamp
        ids = {e.id for e in page if e.timestamp == last}
        self._cursor_ids = ids | self._cursor_ids if last == self.cursor else ids
        self.cursor = last

    def get(self, message_id: Any) -> Receipt | None:
        key = message_key(message_id)
        return None if key is None else self.receipts.get(key)


def since_for(times: Iterable[datetime | str | None]) -> datetime:
    """The earliest of ``times`` less :data:`SINCE_MARGIN` (UTC); now less the margin if none.

    :param times: send times (aware datetimes or ISO 8601 strings), or candidates such as the run's.
    """
    parsed = [t for t in map(_as_utc, times) if t is not None]
    earliest = min(parsed) if parsed else datetime.now(timezone.utc)
    return earliest - SINCE_MARGIN


def _as_utc(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    moment = (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def status_counts(statuses: Iterator[str] | Iterable[str]) -> dict[str, int]:
    """``{status: count}`` over :data:`STATUSES` and :data:`NO_RECEIPT`, every key present."""
    counts = dict.fromkeys((*STATUSES, NO_RECEIPT), 0)
    for status in statuses:
        counts[status] += 1
    return counts
