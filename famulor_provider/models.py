"""Famulor domain types: WhatsApp senders and the values of their fields.

Field names are the API's own. Unknown status and quality strings are kept as they are:
the API adds values (``connecting``, ``NA``, ...) that a provider release cannot foresee.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from famulor_provider.exceptions import (
    FamulorResponseError,
    FamulorSenderNotFoundError,
    FamulorValidationError,
)
from famulor_provider.validation import as_list, check_id, check_optional_int, normalize_phone

ONLINE = "online"  # the documented statuses are online and offline; others may appear


class QualityRating:
    """Meta's quality ratings; ``None`` means the sender is not rated yet."""

    GREEN = "GREEN"
    YELLOW = "YELLOW"
    RED = "RED"
    NA = "NA"
    UNKNOWN = "UNKNOWN"

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
        return (self.status or "").lower() == ONLINE

    def has_capacity(self, min_messaging_limit: int | None) -> bool:
        """Whether the 24 h limit is at least ``min_messaging_limit`` (unlimited always is)."""
        if min_messaging_limit is None or self.messaging_limit is None:
            return True
        return self.messaging_limit >= min_messaging_limit


def _normalize_rating(rating: str | None) -> str | None:
    return rating.upper() if isinstance(rating, str) else None


@dataclass(frozen=True)
class SenderCriteria:
    """What a sender must be to be selected; JSON-native so a trigger can carry it.

    ``None`` means no constraint. ``quality_ratings`` may contain ``None`` (not rated yet).
    """

    online_only: bool = False
    quality_ratings: tuple[str | None, ...] | None = None
    excluded_quality_ratings: tuple[str, ...] = ()
    min_messaging_limit: int | None = None
    sender_ids: tuple[int, ...] | None = None
    phone_numbers: tuple[str, ...] | None = None

    @classmethod
    def parse(
        cls,
        *,
        online_only: bool = False,
        quality_ratings: Any = None,
        excluded_quality_ratings: Any = (),
        min_messaging_limit: Any = None,
        sender_ids: Any = None,
        phone_numbers: Any = None,
    ) -> SenderCriteria:
        """Check and normalise (possibly templated) arguments; raise ``FamulorValidationError``."""
        ratings = as_list(quality_ratings, "quality_ratings")
        ids = as_list(sender_ids, "sender_ids")
        phones = as_list(phone_numbers, "phone_numbers")
        return cls(
            online_only=bool(online_only),
            quality_ratings=None if ratings is None else tuple(_normalize_rating(r) for r in ratings),
            excluded_quality_ratings=tuple(
                str(r).upper() for r in as_list(excluded_quality_ratings, "excluded_quality_ratings") or ()
            ),
            min_messaging_limit=check_optional_int(min_messaging_limit, "min_messaging_limit", minimum=0),
            sender_ids=None if ids is None else tuple(check_id(i, "sender_ids") for i in ids),
            phone_numbers=None if phones is None else tuple(normalize_phone(str(p)) for p in phones),
        )

    def matches(self, sender: WhatsAppSender) -> bool:
        rating = _normalize_rating(sender.quality_rating)
        return (
            (not self.online_only or sender.is_online)
            and (self.quality_ratings is None or rating in self.quality_ratings)
            and rating not in self.excluded_quality_ratings
            and sender.has_capacity(self.min_messaging_limit)
            and (self.sender_ids is None or sender.id in self.sender_ids)
            and (self.phone_numbers is None or normalize_phone(sender.phone_number) in self.phone_numbers)
        )

    def select(self, senders: Iterable[WhatsAppSender]) -> list[WhatsAppSender]:
        """The senders that match, in their order."""
        return [s for s in senders if self.matches(s)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form (lists, not tuples); ``SenderCriteria(**d)`` round-trips via ``from_dict``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SenderCriteria:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


def matching_senders(
    criteria: SenderCriteria, senders: Iterable[WhatsAppSender], famulor_conn_id: str
) -> list[WhatsAppSender]:
    """
    The senders that match ``criteria``; fail when a wanted id or number is not in the account.

    A typo in ``sender_id`` must fail at once, not wait for days: it is told apart from an
    offline sender because the senders come from ``status=all``.

    :param criteria: what a sender must be.
    :param senders: every sender of the account (``status=all``).
    :param famulor_conn_id: the connection, named in the error.
    """
    senders = list(senders)
    ids = {s.id for s in senders}
    phones = {normalize_phone(s.phone_number) for s in senders}
    missing = [f"sender_id {i}" for i in criteria.sender_ids or () if i not in ids]
    missing += [f"phone_number {p}" for p in criteria.phone_numbers or () if p not in phones]
    if not missing and criteria.sender_ids and criteria.phone_numbers:
        both = SenderCriteria(sender_ids=criteria.sender_ids, phone_numbers=criteria.phone_numbers)
        if not both.select(senders):
            ids_text = "/".join(str(i) for i in criteria.sender_ids)
            missing = [
                f"a sender with sender_id {ids_text} and phone_number {'/'.join(criteria.phone_numbers)}"
            ]
    if missing:
        known = ", ".join(f"{s.id} ({s.phone_number})" for s in senders) or "none"
        raise FamulorSenderNotFoundError(
            "sender_id" if "sender_id" in missing[0] else "phone_number",
            f"{' and '.join(missing)} not found among the WhatsApp senders of connection "
            f"{famulor_conn_id!r} (its senders: {known})",
        )
    return criteria.select(senders)


def capacity_key(sender: WhatsAppSender) -> tuple[int, int, float]:
    """Sort key, best first: online, then GREEN > YELLOW > unrated > RED, then the larger limit."""
    rank = QualityRating.RANK.get(_normalize_rating(sender.quality_rating), 2)
    limit = float("inf") if sender.messaging_limit is None else sender.messaging_limit
    return (0 if sender.is_online else 1, rank, -limit)


def order_by_capacity(senders: Iterable[WhatsAppSender]) -> list[WhatsAppSender]:
    """Best sender first (see ``capacity_key``); ties keep the API's order."""
    return sorted(senders, key=capacity_key)


# -- templates, sessions and messages -------------------------------------------------------------


@dataclass(frozen=True)
class WhatsAppTemplate:
    """An approved (or pending, rejected, ...) message template of a sender.

    ``variables`` are the placeholders the template takes (``["1", "2"]`` or named keys).
    """

    id: int
    name: str
    language: str | None
    category: str | None
    status: str | None
    body_text: str | None
    variables: tuple[Any, ...]
    has_variables: bool

    @classmethod
    def from_api(cls, item: Any) -> WhatsAppTemplate:
        """Build a template from one item of the API's ``data`` list; extra fields are ignored."""
        if not isinstance(item, Mapping) or item.get("id") is None:
            raise FamulorResponseError(f"Famulor sent a template without an 'id': {type(item).__name__}")
        template_id = item["id"]
        if isinstance(template_id, str) and template_id.strip().isdigit():
            template_id = int(template_id)
        if not isinstance(template_id, int) or isinstance(template_id, bool):
            raise FamulorResponseError(f"Famulor sent a template with a non-integer 'id': {template_id!r}")
        variables = item.get("variables") or ()
        if not isinstance(variables, (list, tuple)):
            variables = (variables,)
        return cls(
            id=template_id,
            name=str(item.get("name") or ""),
            language=item.get("language"),
            category=item.get("category"),
            status=item.get("status"),
            body_text=item.get("body_text"),
            variables=tuple(variables),
            has_variables=bool(item.get("has_variables", bool(variables))),
        )

    @property
    def is_approved(self) -> bool:
        return (self.status or "").lower() == "approved"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-native dict with the API's keys (what goes to XCom)."""
        return {**asdict(self), "variables": list(self.variables)}


def same_language(template: WhatsAppTemplate, language: str | None) -> bool:
    """Whether ``template`` is in ``language`` (any language when ``None``), case-insensitively."""
    return language is None or (template.language or "").lower() == language.strip().lower()


def find_approved_template(
    templates: Iterable[WhatsAppTemplate], name: str, language: str | None, sender_id: int
) -> WhatsAppTemplate:
    """The one approved template called ``name`` (in ``language``), else a ``FamulorValidationError``.

    :param templates: the sender's templates (any status).
    :param name: the template's name.
    :param language: its language (e.g. ``en``); needed when the name is approved in several.
    :param sender_id: the sender, for the error message.
    """
    named = [t for t in templates if t.name == name and same_language(t, language)]
    approved = [t for t in named if t.is_approved]
    where = f"template {name!r}" + (f" in language {language!r}" if language else "")
    if len(approved) == 1:
        return approved[0]
    if approved:
        languages = ", ".join(sorted(t.language or "?" for t in approved))
        raise FamulorValidationError("language", f"{where} is approved in {languages}; pass language=")
    if named:
        statuses = ", ".join(sorted({t.status or "unknown" for t in named}))
        raise FamulorValidationError(
            "template_name", f"{where} of sender {sender_id} is {statuses}, not approved"
        )
    raise FamulorValidationError("template_name", f"sender {sender_id} has no {where}")


@dataclass(frozen=True)
class WhatsAppSessionStatus:
    """Whether a free-form message can be sent to a recipient (the 24-hour customer-service window).

    ``has_conversation`` plus the fields of the API's ``session_status``; ``expires_at`` is set
    while the window is open, ``expired_at`` once it closed.
    """

    has_conversation: bool
    is_open: bool
    can_send_freeform: bool
    requires_template: bool
    minutes_remaining: int | None
    expires_at: str | None
    expired_at: str | None
    message: str | None

    @classmethod
    def from_api(cls, payload: Any) -> WhatsAppSessionStatus:
        """Build the status from the answer of ``GET /user/whatsapp/session-status``."""
        if not isinstance(payload, Mapping):
            raise FamulorResponseError("Famulor sent a session status that is not a JSON object")
        session = payload.get("session_status")
        session = session if isinstance(session, Mapping) else {}
        is_open = bool(session.get("is_open", False))
        minutes = session.get("minutes_remaining")
        return cls(
            has_conversation=bool(payload.get("has_conversation", False)),
            is_open=is_open,
            can_send_freeform=bool(session.get("can_send_freeform", is_open)),
            requires_template=bool(session.get("requires_template", not is_open)),
            minutes_remaining=minutes if isinstance(minutes, int) and not isinstance(minutes, bool) else None,
            expires_at=session.get("expires_at"),
            expired_at=session.get("expired_at"),
            message=session.get("message"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-native dict (flat: the ``session_status`` fields at the top level)."""
        return asdict(self)


@dataclass(frozen=True)
class WhatsAppMessage:
    """A message the API accepted: the send answer's fields plus what was sent to whom.

    ``template_id`` is ``None`` for a free-form message. ``status`` is ``queued`` or ``sent``.
    """

    sender_id: int
    recipient_phone: str
    template_id: int | None
    message_id: Any
    conversation_id: Any
    whatsapp_message_id: int | None  # an integer per the docs; kept as the API answers it
    message_sid: str | None
    status: str | None

    @classmethod
    def from_api(
        cls, payload: Mapping[str, Any], *, sender_id: int, recipient_phone: str, template_id: int | None
    ) -> WhatsAppMessage:
        """Build the message from a send's success answer; never raises (the message is sent)."""
        return cls(
            sender_id=sender_id,
            recipient_phone=recipient_phone,
            template_id=template_id,
            message_id=payload.get("message_id"),
            conversation_id=payload.get("conversation_id"),
            whatsapp_message_id=payload.get("whatsapp_message_id"),
            message_sid=payload.get("message_sid"),
            status=payload.get("status"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-native dict with the API's keys (what goes to XCom)."""
        return asdict(self)


# -- conversations and replies --------------------------------------------------------------------

CUSTOMER = "user"  # the history's role of the customer; "assistant" is the business side


def _party(item: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = item.get(key)
    return value if isinstance(value, Mapping) else {}


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _count(value: Any) -> int | None:
    """A non-negative ``message_count``; ``None`` when missing or unreadable (the poller reads then)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


@dataclass(frozen=True)
class WhatsAppConversation:
    """One conversation of the listing (``GET /user/conversations``).

    ``message_count`` is the length of its history (``None`` when the API left it out);
    ``updated_at`` / ``created_at`` are the API's ``"YYYY-MM-DD HH:MM:SS"`` strings (UTC).
    """

    id: str
    type: str | None
    message_count: int | None
    updated_at: str | None
    created_at: str | None
    sender_phone: str | None
    sender_name: str | None
    customer_phone: str | None
    customer_name: str | None
    variables: dict[str, Any] | None
    assistant_id: Any
    ai_enabled: bool | None

    @classmethod
    def from_api(cls, item: Any) -> WhatsAppConversation:
        """Build a conversation from one item of the listing's ``data``; extra fields are ignored."""
        if not isinstance(item, Mapping) or item.get("id") in (None, ""):
            raise FamulorResponseError(f"Famulor sent a conversation without an 'id': {type(item).__name__}")
        sender, customer = _party(item, "whatsapp_sender"), _party(item, "customer")
        variables = item.get("variables")
        ai_enabled = item.get("ai_enabled")
        return cls(
            id=str(item["id"]),
            type=_optional_text(item.get("type")),
            message_count=_count(item.get("message_count")),
            updated_at=_optional_text(item.get("updated_at")),
            created_at=_optional_text(item.get("created_at")),
            sender_phone=_optional_text(sender.get("phone")),
            sender_name=_optional_text(sender.get("name")),
            customer_phone=_optional_text(customer.get("phone")),
            customer_name=_optional_text(customer.get("name")),
            variables=dict(variables) if isinstance(variables, Mapping) else None,
            assistant_id=item.get("assistant_id"),
            ai_enabled=ai_enabled if isinstance(ai_enabled, bool) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-native dict (what goes to XCom)."""
        return asdict(self)

    def is_between(self, sender_phone: str, customer_phone: str) -> bool:
        """Whether this is the conversation of this business number with this customer."""
        return normalize_phone(self.sender_phone or "") == normalize_phone(sender_phone) and normalize_phone(
            self.customer_phone or ""
        ) == normalize_phone(customer_phone)


@dataclass(frozen=True)
class ConversationMessage:
    """One message of a history, known by its position ``index`` (messages have no id and no time).

    ``role`` ``"user"`` is the customer, ``"assistant"`` the business side.
    """

    index: int
    role: str | None
    content: str

    @property
    def is_customer(self) -> bool:
        return (self.role or "").lower() == CUSTOMER


@dataclass(frozen=True)
class ConversationHistory:
    """A conversation's messages (``GET /conversations/{uuid}``), oldest first."""

    conversation_id: str
    messages: tuple[ConversationMessage, ...]
    variables: dict[str, Any] | None
    sender_phone: str | None
    customer_phone: str | None
    customer_name: str | None
    sender_name: str | None = None

    @classmethod
    def from_api(cls, conversation_id: str, payload: Any) -> ConversationHistory:
        """Build the history from the answer; unknown fields are ignored, odd messages kept as text."""
        if not isinstance(payload, Mapping):
            raise FamulorResponseError(f"GET /conversations/{conversation_id} answered without a JSON object")
        history = payload.get("history")
        if history is None:
            history = []
        if not isinstance(history, list):
            raise FamulorResponseError(
                f"GET /conversations/{conversation_id} answered without a 'history' list"
            )
        messages = []
        for index, item in enumerate(history):
            item = item if isinstance(item, Mapping) else {"content": item}
            content = item.get("content")
            messages.append(
                ConversationMessage(
                    index=index,
                    role=_optional_text(item.get("role")),
                    content="" if content is None else str(content),
                )
            )
        sender, customer = _party(payload, "whatsapp_sender"), _party(payload, "customer")
        variables = payload.get("variables")
        return cls(
            conversation_id=conversation_id,
            messages=tuple(messages),
            variables=dict(variables) if isinstance(variables, Mapping) else None,
            sender_phone=_optional_text(sender.get("phone")),
            customer_phone=_optional_text(customer.get("phone")),
            customer_name=_optional_text(customer.get("name")),
            sender_name=_optional_text(sender.get("name")),
        )

    def customer_messages(self, start: int = 0) -> list[ConversationMessage]:
        """The customer's messages at position ``start`` or later, in order."""
        return [m for m in self.messages[start:] if m.is_customer]


# WhatsApp's formatting markers: *bold*, _italic_, ~strikethrough~, `monospace` and ```code```.
FORMATTING_MARKERS = frozenset("*_~`")
KEYCAP = "\u20e3"  # the enclosing keycap of 1️⃣


def _is_invisible(char: str) -> bool:
    """Zero-width and other format characters, variation selectors and skin-tone modifiers."""
    code = ord(char)
    return (
        unicodedata.category(char) == "Cf"  # zero-width space/joiners, direction marks, BOM, tags
        or 0xFE00 <= code <= 0xFE0F  # variation selectors (U+FE0F: "as emoji")
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF  # skin-tone modifiers
    )


def _is_edge_noise(char: str) -> bool:
    return char.isspace() or char in FORMATTING_MARKERS or unicodedata.category(char).startswith("P")


def _is_emoji(char: str) -> bool:
    return unicodedata.category(char) == "So" or char == KEYCAP


def _strip(text: str, noise: Callable[[str], bool]) -> str:
    start, end = 0, len(text)
    while start < end and noise(text[start]):
        start += 1
    while end > start and noise(text[end - 1]):
        end -= 1
    return text[start:end]


def normalize_reply(text: str) -> str:
    """A reply as ``choices`` compare it.

    Unicode NFKC (full-width ``yes`` is ``yes``) and case folding; zero-width characters, variation
    selectors and skin-tone modifiers removed; spaces, punctuation, WhatsApp's formatting markers
    (``*``, ``_``, ``~``, backticks) and emoji around the words dropped. A reply of emoji only is
    compared as those emoji (``👍🏽`` is ``👍``). What is inside stays: ``" *Yes* 👍 "`` is
    ``"yes"``, but ``"Yes, but later"`` and ``"yesterday"`` are not.

    :param text: the reply (or a choice).
    """
    text = "".join(c for c in unicodedata.normalize("NFKC", text) if not _is_invisible(c))
    text = unicodedata.normalize("NFKC", text.casefold())
    stripped = _strip(text, _is_edge_noise)
    words = _strip(stripped, lambda c: _is_edge_noise(c) or _is_emoji(c))
    return words or stripped


def check_choices(choices: Any) -> tuple[str, ...] | None:
    """The (rendered) ``choices`` as a tuple of strings, or ``None`` for any reply.

    :param choices: the accepted answers, e.g. ``["YES", "NO"]``.
    """
    values = as_list(choices, "choices")
    if values is None:
        return None
    checked: dict[str, str] = {}
    for value in values:
        if not isinstance(value, str) or not normalize_reply(value):
            raise FamulorValidationError(
                "choices",
                f"{value!r} is not a reply a customer can write: give non-empty texts, e.g. ['YES', 'NO']",
            )
        key = normalize_reply(value)
        if key in checked:
            raise FamulorValidationError(
                "choices",
                f"{checked[key]!r} and {value!r} are the same answer "
                "(case, and the spaces, punctuation, formatting markers and emoji around it are ignored)",
            )
        checked[key] = value
    if not checked:
        raise FamulorValidationError("choices", "is empty: give the accepted answers, or None for any reply")
    return tuple(checked.values())


def match_choice(text: str, choices: Iterable[str] | None) -> str | None:
    """The entry of ``choices`` (as written there) that ``text`` equals once both are normalised
    (:func:`normalize_reply`); ``None`` when none does.

    :param text: the customer's reply.
    :param choices: the accepted answers.
    """
    reply = normalize_reply(text)
    return next((c for c in choices or () if normalize_reply(c) == reply), None)
