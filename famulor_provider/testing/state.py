"""The sandbox's seed data and the state its parts share (``SandboxState``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading
    from collections import deque

    from famulor_provider.testing.faults import Fault

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

DEFAULT_SEND_RATE_LIMIT = 5
"""The API's documented send limit: requests per second per user."""
SESSION_MINUTES = 24 * 60


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


class SandboxState:
    """The attributes ``FamulorSandbox.__init__`` sets and its parts (the mixins) share.

    Every change happens under ``_lock``.
    """

    api_key: str
    send_rate_limit: float | None
    _lock: threading.RLock
    _stopping: threading.Event  # set by stop(): wakes requests held by "delay" and "hang" faults
    _senders: dict[int, dict[str, Any]]
    _templates: dict[int, list[dict[str, Any]]]
    _scheduled: list[tuple[float, int, dict[str, Any]]]  # (due monotonic, sender_id, fields)
    _faults: list[Fault]
    _ledger: list[bytes]  # JSON, serialized once: entries never change once billed
    _sessions: dict[tuple[int, str], float]  # (sender_id, phone) -> window end (epoch)
    _send_times: deque[float]
    _read_times: deque[float]
    _next_message_id: int
    _requests: list[RecordedRequest]

    @property
    def base_url(self) -> str:
        """The Classic API base URL (``FamulorSandbox`` knows it)."""
        raise NotImplementedError
