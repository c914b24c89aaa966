"""From inbound asset events to the customers' messages, in the task that consumes them.

``WhatsAppInboundMessageTrigger``'s events say where a message is, never whose or what it is
(Airflow logs every event a trigger fires at INFO and stores its payload in ``asset_event``):

- ``conversation_id``, ``message_index``: the message's position in the conversation's history;
- ``sender_phone``: the business number the customer wrote to (not personal);
- ``history_length``: how long the history was when the trigger read it;
- ``roles_digest``: a digest of who wrote each of those messages (customer or not), nothing of
  their content;
- ``epoch``: how many times the trigger saw the conversation's history cut;
- ``dedupe_key``: ``"{conversation_id}:{message_index}"``, plus ``"@{epoch}"`` once cut.

:func:`inbound_messages` reads each conversation once (``GET /conversations/{uuid}``, retried as
reads are) and returns the messages with their full fields. Messages have no id and no time: a
message is known by its position, so the function checks that the history still begins as the
trigger read it (at least ``history_length`` messages, the same ``roles_digest``). When it does
not (messages were deleted since, or the conversation was), the event is reported in
``InboundMessages.cut``, never answered with whatever message is at that position now; a message
that is still there is reported too when others before ``history_length`` were deleted (positions
cannot tell which). A history cut and then grown back past ``history_length`` with the same
sequence of who wrote passes for the one the trigger read: positions cannot tell that either.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from famulor_provider.models import ConversationHistory, ConversationMessage

log = logging.getLogger(__name__)

# The keys of each message inbound_messages() returns (what the trigger's events held before).
MESSAGE_KEYS = (
    "conversation_id",
    "sender_phone",
    "sender_name",
    "customer_phone",
    "customer_name",
    "text",
    "message_index",
    "variables",
    "dedupe_key",
)


def roles_digest(messages: Sequence[ConversationMessage]) -> str:
    """Who wrote each message, in order (``u``: the customer, ``a``: anyone else), as 16 hex digits
    of SHA-256: tells a cut history from the one the trigger read, and holds nothing of the texts."""
    pattern = "".join("u" if message.is_customer else "a" for message in messages)
    return hashlib.sha256(pattern.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CutMessage:
    """An event whose conversation lost messages since the trigger read it (or was deleted): its
    message cannot be told apart any longer. No personal data: log it freely.

    :param dedupe_key: the event's ``dedupe_key``.
    :param conversation_id: the conversation.
    :param message_index: the message's position when the trigger read it.
    :param reason: what the read found instead.
    """

    dedupe_key: str
    conversation_id: str
    message_index: int
    reason: str


@dataclass(frozen=True)
class InboundMessages:
    """What :func:`inbound_messages` found.

    :param messages: one dict per message (each ``dedupe_key`` once, in the events' order), with
        :data:`MESSAGE_KEYS`: ``conversation_id``, ``sender_phone``, ``sender_name``,
        ``customer_phone``, ``customer_name``, ``text``, ``message_index``, ``variables``,
        ``dedupe_key``.
    :param cut: the events whose conversation lost messages since the trigger read it.
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    cut: list[CutMessage] = field(default_factory=list)


def _payload(event: Any) -> Mapping[str, Any] | None:
    """The trigger's payload of an asset event (or of the payload itself); ``None`` for another event."""
    if isinstance(event, Mapping) and "dedupe_key" in event:
        return event
    extra = event if isinstance(event, Mapping) else getattr(event, "extra", None)
    payload = extra.get("payload") if isinstance(extra, Mapping) else None
    if isinstance(payload, Mapping) and "dedupe_key" in payload and "conversation_id" in payload:
        return payload
    return None


def _check(history: ConversationHistory, event: Mapping[str, Any]) -> str | None:
    """Why the event's message cannot be told apart in ``history`` any longer; ``None``: it can."""
    index, length = int(event["message_index"]), int(event["history_length"])
    if len(history.messages) < max(length, index + 1):
        return f"the history has {len(history.messages)} message(s) now, {length} when the trigger read it"
    if (
        roles_digest(history.messages[:length]) != event["roles_digest"]
        or not history.messages[index].is_customer
    ):
        return "the history's first messages are not the ones the trigger read: messages were deleted"
    return None


def _message(history: ConversationHistory, event: Mapping[str, Any]) -> dict[str, Any]:
    message = history.messages[int(event["message_index"])]
    return {
        "conversation_id": history.conversation_id,
        "sender_phone": history.sender_phone or event.get("sender_phone"),
        "sender_name": history.sender_name,
        "customer_phone": history.customer_phone,
        "customer_name": history.customer_name,
        "text": message.content,
        "message_index": message.index,
        "variables": history.variables,
        "dedupe_key": event["dedupe_key"],
    }


def inbound_messages(events: Iterable[Any], *, famulor_conn_id: str = "famulor_default") -> InboundMessages:
    """
    The customers' messages of a run's inbound asset events: one read per conversation.

    Each ``dedupe_key`` counts once (a message may come twice: after a triggerer crash, or from
    both ``triggering_asset_events`` and ``inlet_events``). Events of other sources are skipped;
    an event stored by an earlier release, which carried the message itself, is taken as it is.

    :param events: asset events (anything with ``extra``, or ``extra`` dicts, or the payloads).
    :param famulor_conn_id: the connection of the trigger that fired them.
    :raises FamulorValidationError: an event of the trigger lacks a key it always has.
    :raises FamulorError: a read failed after its retries (other than a deleted conversation).
    """
    from famulor_provider.exceptions import FamulorConversationNotFoundError, FamulorValidationError
    from famulor_provider.hooks.famulor import FamulorHook

    wanted: dict[str, Mapping[str, Any]] = {}
    for event in events:
        payload = _payload(event)
        if payload is not None:
            wanted.setdefault(str(payload["dedupe_key"]), payload)
    by_conversation: dict[str, list[Mapping[str, Any]]] = {}
    for key, payload in wanted.items():
        if "text" in payload:  # an earlier release's event holds the message: nothing to read
            continue
        missing = [
            name for name in ("message_index", "history_length", "roles_digest") if name not in payload
        ]
        if missing:
            raise FamulorValidationError("events", f"the inbound event {key} has no {', '.join(missing)}")
        by_conversation.setdefault(str(payload["conversation_id"]), []).append(payload)
    hook = FamulorHook(famulor_conn_id)
    found: dict[str, dict[str, Any]] = {}
    cut: dict[str, CutMessage] = {}
    for conversation_id, payloads in by_conversation.items():
        try:
            history: ConversationHistory | None = hook.get_conversation(conversation_id)
        except FamulorConversationNotFoundError:
            history = None
        for payload in payloads:
            reason = "the conversation was deleted" if history is None else _check(history, payload)
            key = str(payload["dedupe_key"])
            if reason is not None:
                cut[key] = CutMessage(key, conversation_id, int(payload["message_index"]), reason)
            else:
                assert history is not None
                found[key] = _message(history, payload)
    result = InboundMessages()
    for key, payload in wanted.items():
        if key in found:
            result.messages.append(found[key])
        elif key in cut:
            result.cut.append(cut[key])
        else:
            result.messages.append({name: payload.get(name) for name in MESSAGE_KEYS})
    for item in result.cut:
        log.warning(
            "Message %s of conversation %s cannot be told apart (%s): its event is skipped",
            item.message_index,
            item.conversation_id,
            item.reason,
        )
    return result
