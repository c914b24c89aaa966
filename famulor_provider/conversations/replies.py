"""Where "after the send" begins, and which customer message is the reply.

Messages carry no id and no time: a message is known by its position in the conversation's
history. A single send records the history's length right after it (one read); customer
messages at that position or later are replies. The rules, in the README ("Waiting for a reply"):

- known baseline (the send's read worked): messages at index >= ``history_length_after_send``
  count; a conversation that did not exist at that read has baseline 0;
- unknown baseline (the read failed, or no ``after``): the history's length at the waiter's
  first read is the baseline, so only messages that arrive after that read count;
- only ``role: "user"`` messages count; the assistant's never do;
- with ``choices``, the first counted message that equals a choice once both are normalised
  (``famulor_provider.models.normalize_reply``: case, invisible characters, and the spaces,
  punctuation, formatting markers and emoji around the words ignored) is the reply; without,
  the first counted message is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from famulor_provider.models import ConversationHistory, match_choice
from famulor_provider.privacy import phone_for_log
from famulor_provider.validation import normalize_phone

if TYPE_CHECKING:
    from famulor_provider.hooks.famulor import FamulorHook
    from famulor_provider.models import WhatsAppMessage

log = logging.getLogger(__name__)

AFTER_SEND_DEADLINE = 5.0  # seconds the read after a send may take at most (one attempt)

# The keys a single send adds to its result (XCom) for the reply sensor.
AFTER_SEND_KEYS = (
    "sender_phone",
    "conversation_uuid",
    "history_length_after_send",
    "history_lengths_after_send",
)


def history_after_send(hook: FamulorHook, message: WhatsAppMessage) -> dict[str, Any]:
    """
    Read, once, how long the recipient's conversations are right after a send.

    One ``GET /user/conversations?customer_phone=...`` with a short deadline
    (``min(5 s, timeout)``), no retries and no waiting on a 429: it must never fail, slow or
    repeat the send. Returns the :data:`AFTER_SEND_KEYS`: ``history_lengths_after_send`` maps
    each business number the customer has a WhatsApp conversation with to its ``message_count``
    (``None`` when the read failed: the baseline is unknown); ``sender_phone``,
    ``conversation_uuid`` and ``history_length_after_send`` describe that conversation when there
    is exactly one (``history_length_after_send`` is 0 when there is none yet).

    :param hook: the send's hook (its connection is reused, with the short deadline).
    :param message: the accepted send.
    """
    from famulor_provider.exceptions import FamulorError
    from famulor_provider.hooks.famulor import FamulorHook

    result: dict[str, Any] = dict.fromkeys(AFTER_SEND_KEYS)
    try:
        reader = FamulorHook(
            hook.famulor_conn_id, timeout=min(AFTER_SEND_DEADLINE, hook.config.deadline), max_retries=0
        )
        # One page: a customer has one conversation per business number of the account.
        pages = reader.iter_conversation_pages(customer_phone=message.recipient_phone, max_retries=0)
        conversations = next(iter(pages))
    except Exception as err:  # never fail a send that was accepted
        log.warning(
            "The message was sent; reading its conversation afterwards failed (%s), so a reply "
            "sensor will count only the messages that arrive after its own first read",
            err if isinstance(err, FamulorError) else type(err).__name__,  # ours never hold the key
        )
        return result
    customer = normalize_phone(message.recipient_phone)
    lengths = {
        normalize_phone(c.sender_phone or ""): c.message_count or 0
        for c in conversations
        if c.sender_phone and normalize_phone(c.customer_phone or "") == customer
    }
    result["history_lengths_after_send"] = lengths
    mine = [c for c in conversations if normalize_phone(c.sender_phone or "") in lengths]
    if len(mine) == 1:
        result.update(
            sender_phone=mine[0].sender_phone,
            conversation_uuid=mine[0].id,
            history_length_after_send=mine[0].message_count or 0,
        )
    elif not mine:
        result["history_length_after_send"] = 0
    log.debug("History after the send to %s: %s", message.recipient_phone, lengths)
    return result


def baseline_from_send(after: Mapping[str, Any], sender_phone: str) -> int | None:
    """The history length after the send recorded in ``after`` for ``sender_phone``; ``None``: unknown.

    :param after: a single send's result.
    :param sender_phone: the sender's business number.
    """
    lengths = after.get("history_lengths_after_send")
    if not isinstance(lengths, Mapping):
        return None
    value = lengths.get(normalize_phone(sender_phone), 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class ReplyWatch:
    """One awaited reply: whose conversation, where "after the send" begins, what counts.

    JSON-native (``to_dict`` / ``from_dict``) so a trigger can carry it.

    :param sender_phone: the business number.
    :param recipient_phone: the customer.
    :param baseline: the history length after the send; ``None`` until known.
    :param choices: the accepted answers, or ``None`` for any reply.
    """

    sender_phone: str
    recipient_phone: str
    baseline: int | None
    choices: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sender_phone": self.sender_phone,
            "recipient_phone": self.recipient_phone,
            "baseline": self.baseline,
            "choices": None if self.choices is None else list(self.choices),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplyWatch:
        choices = data.get("choices")
        return cls(
            sender_phone=str(data["sender_phone"]),
            recipient_phone=str(data["recipient_phone"]),
            baseline=data.get("baseline"),
            choices=None if choices is None else tuple(choices),
        )

    @property
    def key(self) -> tuple[str, str]:
        """The conversation's identity: (business number, customer), normalised."""
        return normalize_phone(self.sender_phone), normalize_phone(self.recipient_phone)

    def reply(self, history: ConversationHistory, logged: set[int] | None = None) -> dict[str, Any] | None:
        """The result (XCom) when ``history`` holds the awaited reply, else ``None``.

        Sets the baseline from this history when it is still unknown (nothing counts then).

        :param history: the conversation's history.
        :param logged: indices of other replies already logged (updated), so each is logged once.
        """
        if self.baseline is None:
            self.baseline = len(history.messages)
            log.info(
                "Counting the replies of %s after position %d (where the first read found the history)",
                phone_for_log(self.recipient_phone),
                self.baseline,
            )
            return None
        replies = history.customer_messages(self.baseline)
        for message in replies:
            choice = match_choice(message.content, self.choices) if self.choices is not None else None
            if self.choices is None or choice is not None:
                return {
                    "conversation_id": history.conversation_id,
                    "sender_phone": self.sender_phone,
                    "recipient_phone": self.recipient_phone,
                    "text": message.content,
                    "choice": choice,
                    "message_index": message.index,
                    "replies": [m.content for m in replies],
                }
            if logged is not None and message.index not in logged:
                logged.add(message.index)
                log.info(
                    "%s replied something that is not one of the choices (message %d); still waiting",
                    phone_for_log(self.recipient_phone),
                    message.index,
                )
                log.debug("Reply of %s that matched no choice: %r", self.recipient_phone, message.content)
        return None


def conversation_for(conversations: Iterable[Any], watch: ReplyWatch) -> Any:
    """The listed conversation of ``watch`` (sender and customer), or ``None`` when it does not exist yet."""
    return next((c for c in conversations if c.is_between(*watch.key)), None)


@dataclass
class ReplyProgress:
    """What a waiter (poke or trigger) has seen of one conversation between polls.

    :param watch: the awaited reply.
    """

    watch: ReplyWatch
    read_count: int = 0  # history length at the last read
    logged: set[int] | None = None
    last_history: ConversationHistory | None = None

    def needs_read(self, conversation: Any, *, exact: bool) -> bool:
        """Whether the listed ``conversation`` (``None``: not listed) may hold a new reply.

        Learns an unknown baseline from the listing where it can: a conversation that an exact
        (filtered) listing does not show has none yet (baseline 0); a listed one, its
        ``message_count``.

        :param conversation: the listing's conversation of the watch, or ``None``.
        :param exact: the listing was filtered by sender and customer (absence is proof).
        """
        if conversation is None:
            if self.watch.baseline is None and exact:
                self.watch.baseline = 0
            return False
        count = conversation.message_count
        if count is None:
            return True  # the API left the count out: only a read can tell
        if self.watch.baseline is None:
            self.watch.baseline = self.read_count = count
            log.info(
                "Counting the replies of %s after position %d (the history's length at the first read)",
                phone_for_log(self.watch.recipient_phone),
                count,
            )
            return False
        return count > max(self.watch.baseline, self.read_count)

    def on_history(self, history: ConversationHistory) -> dict[str, Any] | None:
        """The result when ``history`` holds the awaited reply, else ``None`` (see ``ReplyWatch.reply``)."""
        if self.logged is None:
            self.logged = set()
        result = self.watch.reply(history, self.logged)
        self.read_count, self.last_history = len(history.messages), history
        return result


def found_event(progress: ReplyProgress, reply: Mapping[str, Any]) -> dict[str, Any]:
    """A reply trigger's success payload: where the reply is, never whose or what it is.

    Airflow logs each event a trigger fires at INFO, payload included, so the payload holds no
    customer number and no text: the resumed task reads them (:func:`resume_reply`).

    :param progress: the trigger's progress; its last read found ``reply``.
    :param reply: :meth:`ReplyWatch.reply`'s result.
    """
    return {
        "status": "success",
        "conversation_id": reply["conversation_id"],
        "sender_phone": progress.watch.sender_phone,  # the business number
        "baseline": progress.watch.baseline,
        "message_index": reply["message_index"],
        "history_length": progress.read_count,
    }


def resume_reply(
    hook: FamulorHook, event: Mapping[str, Any], recipient_phone: str, choices: tuple[str, ...] | None
) -> dict[str, Any]:
    """The sensor's result (XCom) from a reply trigger's :func:`found_event`: one read of the
    conversation (retried as reads are), cut to the history the trigger saw.

    A conversation changed since (the customer wrote on) gives the result the trigger saw; one
    whose history was cut gives the first reply still in it, or a ``FamulorError`` when none is.

    :param hook: the sensor's hook.
    :param event: the success event's payload.
    :param recipient_phone: the customer.
    :param choices: the accepted answers, or ``None`` for any reply.
    """
    import dataclasses

    from famulor_provider.exceptions import FamulorError

    conversation_id = str(event["conversation_id"])
    history = hook.get_conversation(conversation_id)
    watch = ReplyWatch(str(event["sender_phone"]), recipient_phone, int(event["baseline"]), choices)
    seen = dataclasses.replace(history, messages=history.messages[: int(event["history_length"])])
    reply = watch.reply(seen)
    if reply is None or reply["message_index"] != event["message_index"]:
        reply = watch.reply(history)
    if reply is None:
        raise FamulorError(
            f"The reply the trigger found (message {event['message_index']}) is no longer in "
            f"conversation {conversation_id}: its history was cut. Clear the task to wait again."
        )
    return reply


def sender_phone_of(senders: Iterable[Any], sender_id: int, famulor_conn_id: str) -> str:
    """The business number of ``sender_id``; an id not in the account fails at once.

    :param senders: every sender of the account (``status=all``).
    :param sender_id: the sender.
    :param famulor_conn_id: the connection, named in the error.
    """
    from famulor_provider.models import SenderCriteria, matching_senders

    (sender,) = matching_senders(SenderCriteria(sender_ids=(sender_id,)), senders, famulor_conn_id)
    return str(sender.phone_number)
