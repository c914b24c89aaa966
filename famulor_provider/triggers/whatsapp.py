"""Triggers for Famulor's WhatsApp API.

Importing this module must stay cheap (the triggerer and the DAG processor import it): the
hook, ``httpx`` and ``tenacity`` are imported inside the methods that use them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from famulor_provider.exceptions import (
    FamulorConversationNotFoundError,
    FamulorError,
    FamulorTimeoutError,
    FamulorValidationError,
    error_event,
)
from famulor_provider.get_provider_info import DEFAULT_TIMEOUT
from famulor_provider.models import (
    ConversationHistory,
    SenderCriteria,
    WhatsAppConversation,
    WhatsAppSender,
    matching_senders,
)
from famulor_provider.validation import normalize_phone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence

    from famulor_provider.conversations.inbound_poll import InboundProducer
    from famulor_provider.conversations.replies import ReplyProgress, ReplyWatch

DEFAULT_POLL_INTERVAL = 300.0  # Famulor syncs sender status with Meta every 5 minutes
DEFAULT_REPLY_POLL_INTERVAL = 60.0
MIN_POLL_INTERVAL = 0.1  # a floor, so that a poll interval of 0 cannot become a hot loop


# ---------------------------------------------------------------------------------------------
# Coalescing: triggers in one triggerer that poll the same connection share one request.


class _SharedListing:
    """One listing of a connection's senders, in flight or done, shared by every trigger polling it.

    ``deadline`` (loop time) is when an unfinished listing counts as stalled: nobody joins it
    after that. It is the connection's ``timeout`` after the start, once the connection is read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, famulor_conn_id: str, status: str) -> None:
        self.started_at = loop.time()
        self.deadline = self.started_at + DEFAULT_TIMEOUT
        self.task: asyncio.Task[list[WhatsAppSender]] = loop.create_task(self._list(famulor_conn_id, status))
        self.task.add_done_callback(_retrieve_exception)

    async def _list(self, famulor_conn_id: str, status: str) -> list[WhatsAppSender]:
        from famulor_provider.hooks.famulor import FamulorHook

        hook = FamulorHook(famulor_conn_id)
        config = await hook.aget_config()
        self.deadline = self.started_at + config.deadline
        # One attempt: the trigger's own poll loop is the retry, so no listing outlives its deadline.
        return await hook.alist_whatsapp_senders(status=status, max_retries=0)

    def reusable(self, now: float, max_age: float) -> bool:
        """Whether a caller may join it (in flight, not stalled) or reuse its result (young enough).

        An error is never reused: it belongs to the poll that was waiting for it, and the next
        poll asks again (a reused 503 would blind a trigger for ``max_age``).
        """
        if not self.task.done():
            return now < self.deadline
        if self.task.cancelled() or self.task.exception() is not None:
            return False
        return now - self.started_at < max_age


# Keyed by event loop (the triggerer runs one; tests make new ones), connection and status query.
_listings: dict[tuple[asyncio.AbstractEventLoop, str, str], _SharedListing] = {}


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # Every waiter may have been cancelled: mark the error as seen so asyncio does not warn.
    if not task.cancelled():
        task.exception()


async def shared_senders(
    famulor_conn_id: str, *, max_age: float, status: str = "all"
) -> list[WhatsAppSender]:
    """
    List the senders of a connection, sharing the request with the other triggers of this loop.

    A caller joins the request in flight, or reuses the last result while it is younger than
    ``max_age``; otherwise it starts a new request. An error reaches only the callers that were
    waiting for that request: the next call asks again. Callers with the shortest poll
    interval thus refresh the result for everybody: about one request per shortest interval.
    Cancelling a caller never cancels the shared request (``asyncio.shield``).

    :param famulor_conn_id: the Famulor connection.
    :param max_age: seconds a finished result may be reused (the caller's poll interval).
    :param status: the ``status`` query of ``GET /user/whatsapp/senders``.
    """
    loop = asyncio.get_running_loop()
    key = (loop, famulor_conn_id, status)
    listing = _listings.get(key)
    if listing is None or not listing.reusable(loop.time(), max_age):
        for stale in [k for k in _listings if k[0].is_closed()]:
            del _listings[stale]
        listing = _listings[key] = _SharedListing(loop, famulor_conn_id, status)
    try:
        return await asyncio.wait_for(asyncio.shield(listing.task), max(0.0, listing.deadline - loop.time()))
    except asyncio.TimeoutError:
        raise FamulorTimeoutError(
            f"GET /user/whatsapp/senders of connection {famulor_conn_id!r}: the shared request got "
            "no complete answer by its deadline"
        ) from None


# ---------------------------------------------------------------------------------------------


def _classpath(trigger: object) -> str:
    return f"{type(trigger).__module__}.{type(trigger).__qualname__}"


class _PollingTrigger(BaseTrigger):
    """What the sender and reply triggers share: the connection, the poll interval, the end time
    and a serialization of JSON primitives only (never the API key: the triggerer loads the
    connection).

    :param famulor_conn_id: the Famulor connection.
    :param poll_interval: seconds between polls.
    :param end_time: when to give up, as epoch seconds or an ISO 8601 string; ``None``: never.
    """

    def __init__(self, famulor_conn_id: str, poll_interval: float, end_time: float | str | None) -> None:
        super().__init__()
        self.famulor_conn_id = famulor_conn_id
        self.poll_interval = max(float(poll_interval), MIN_POLL_INTERVAL)
        if isinstance(end_time, str):
            end_time = datetime.fromisoformat(end_time).timestamp()
        self.end_time = None if end_time is None else float(end_time)

    def arguments(self) -> dict[str, Any]:
        """The trigger's own arguments (besides the three above), as JSON primitives."""
        raise NotImplementedError

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and JSON primitives only."""
        common = {"poll_interval": self.poll_interval, "end_time": self.end_time}
        return _classpath(self), {"famulor_conn_id": self.famulor_conn_id, **self.arguments(), **common}

    def _remaining(self) -> float | None:
        return None if self.end_time is None else self.end_time - time.time()


class WhatsAppSenderTrigger(_PollingTrigger):
    """
    Wait until at least ``min_count`` WhatsApp senders match ``criteria``.

    Polls ``GET /user/whatsapp/senders?status=all`` through the async hook, sharing each
    request with the other triggers of the same connection in this triggerer. Yields exactly
    one event: ``{"status": "success", "senders": [...]}``, ``{"status": "error", "error_type",
    "message", ...}`` for an error that waiting cannot fix (auth, unknown sender), or
    ``{"status": "timeout", "message", "senders"}`` at ``end_time``, even while a request hangs.
    Each poll is one attempt within the connection's ``timeout``; transient faults (429, 5xx,
    timeouts) are logged and the next poll is the retry.

    :param famulor_conn_id: the Famulor connection.
    :param criteria: a :class:`SenderCriteria` or its ``to_dict()``.
    :param min_count: how many senders must match.
    :param poll_interval: seconds between polls.
    :param end_time: when to give up, as epoch seconds or an ISO 8601 string; ``None``: never.
    """

    def __init__(
        self,
        *,
        famulor_conn_id: str = "famulor_default",
        criteria: SenderCriteria | Mapping[str, Any] | None = None,
        min_count: int = 1,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        end_time: float | str | None = None,
    ) -> None:
        super().__init__(famulor_conn_id, poll_interval, end_time)
        if criteria is None:
            criteria = SenderCriteria()
        self.criteria = (
            criteria if isinstance(criteria, SenderCriteria) else SenderCriteria.from_dict(criteria)
        )
        self.min_count = int(min_count)

    def arguments(self) -> dict[str, Any]:
        return {"criteria": self.criteria.to_dict(), "min_count": self.min_count}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from famulor_provider.transport import MAX_RETRY_AFTER, is_retryable_read

        matching: list[WhatsAppSender] = []
        while True:
            wait = self.poll_interval
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                yield TriggerEvent(
                    {
                        "status": "timeout",
                        "message": f"Sensor has timed out: fewer than {self.min_count} WhatsApp sender(s) "
                        f"of connection {self.famulor_conn_id!r} matched {self.criteria} "
                        f"by the end time ({len(matching)} did)",
                        "senders": [s.to_dict() for s in matching],
                    }
                )
                return
            try:
                senders = await asyncio.wait_for(
                    shared_senders(self.famulor_conn_id, max_age=self.poll_interval), timeout=remaining
                )
                matching = matching_senders(self.criteria, senders, self.famulor_conn_id)
            except asyncio.TimeoutError:
                pass  # the end time came while waiting for the answer: the next check ends the loop
            except FamulorError as err:
                if not is_retryable_read(err):
                    yield TriggerEvent(error_event(err))
                    return
                self.log.warning("Famulor is unavailable for now (%s); still waiting", err)
                retry_after = getattr(err, "retry_after", None)
                if retry_after is not None:  # the API said when: polling sooner only earns another 429
                    wait = max(wait, min(float(retry_after), MAX_RETRY_AFTER))
            except Exception as err:
                yield TriggerEvent(error_event(err))
                return
            else:
                if len(matching) >= self.min_count:
                    yield TriggerEvent({"status": "success", "senders": [s.to_dict() for s in matching]})
                    return
                self.log.info(
                    "%d of %d WhatsApp sender(s) match, waiting for %d; next poll in %g s",
                    len(matching),
                    len(senders),
                    self.min_count,
                    self.poll_interval,
                )
            remaining = self._remaining()
            await asyncio.sleep(wait if remaining is None else max(0.0, min(wait, remaining)))


# ---------------------------------------------------------------------------------------------
# Replies: every reply trigger of a connection in one triggerer shares one poller.

SENDER_PHONES_MAX_AGE = 3600.0  # a sender's number does not change: list the senders at most hourly


@dataclass
class _Listed:
    """What a round found for one watched conversation: the listing's item (``None``: not listed)."""

    conversation: WhatsAppConversation | None
    exact: bool  # from a listing filtered by sender and customer: absence is proof
    round: int


class ConversationPoller:
    """
    Polls the conversations of one connection for every reply trigger of an event loop.

    A round lists what the registered triggers wait for, the cheaper of two ways: the whole
    WhatsApp listing (its pages, ``per_page=100``) or one listing filtered by sender and customer
    per awaited conversation. While the number of pages is unknown a whole walk stops after as
    many pages as there are conversations to poll, and the round finishes with filtered listings
    (at most twice the cheaper cost, once). Rounds start at most once per shortest poll interval,
    stretched by the polling budget; every request takes a slot of the connection's budget.
    A history is read at most once per conversation and ``message_count`` (shared by the triggers
    waiting on it), only when a trigger sees the count grow past what it knows.

    :param famulor_conn_id: the Famulor connection.
    """

    def __init__(self, famulor_conn_id: str) -> None:
        self.famulor_conn_id = famulor_conn_id
        self.watchers: dict[int, tuple[tuple[str, str], float]] = {}
        self.results: dict[tuple[str, str], _Listed] = {}
        self.rounds = 0
        self.requests = 0  # every request this poller sent (for the benchmark and the logs)
        self.full_pages: int | None = None  # pages of the whole listing; a lower bound after a stopped walk
        self._round: asyncio.Task[None] | None = None
        self._next_round_at = 0.0
        self._spent_at_round = 0
        self._reads: dict[tuple[str, Any], asyncio.Task[ConversationHistory]] = {}

    @cached_property
    def hook(self) -> Any:
        from famulor_provider.hooks.famulor import FamulorHook

        return FamulorHook(self.famulor_conn_id)

    def register(self, token: int, key: tuple[str, str], interval: float) -> None:
        self.watchers[token] = (key, interval)

    def unregister(self, token: int) -> None:
        self.watchers.pop(token, None)
        keys = {key for key, _ in self.watchers.values()}
        for key in [k for k in self.results if k not in keys]:
            del self.results[key]

    async def conversation(self, key: tuple[str, str], after_round: int) -> _Listed:
        """The listing's item for ``key`` from a round later than ``after_round`` (joining or starting it).

        :param key: (business number, customer), normalised; registered before.
        :param after_round: the round of the caller's previous result (0 at first).
        """
        loop = asyncio.get_running_loop()
        while True:
            listed = self.results.get(key)
            if listed is not None and listed.round > after_round:
                return listed
            if self._round is None or self._round.done():
                self._round = loop.create_task(self._run_round())
                self._round.add_done_callback(_retrieve_exception)
            await asyncio.shield(self._round)

    async def history(self, conversation: WhatsAppConversation) -> ConversationHistory:
        """The conversation's history, read once per ``message_count`` for every trigger that asks."""
        key = (
            conversation.id,
            conversation.message_count if conversation.message_count is not None else self.rounds,
        )
        task = self._reads.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            for stale in [k for k in self._reads if k[0] == conversation.id and k != key]:
                del self._reads[stale]
            task = self._reads[key] = asyncio.get_running_loop().create_task(self._read(conversation.id))
            task.add_done_callback(_retrieve_exception)
        return await asyncio.shield(task)

    async def _slot(self) -> None:
        from famulor_provider.conversations import polling

        config = await self.hook.aget_config()
        await polling.POLLING_BUDGET.acquire(self.famulor_conn_id, config.poll_requests_per_minute)
        self.requests += 1

    async def _read(self, conversation_id: str) -> ConversationHistory:
        await self._slot()
        history: ConversationHistory = await self.hook.aget_conversation(conversation_id, max_retries=0)
        return history

    async def _run_round(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._next_round_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        config = await self.hook.aget_config()
        keys = {key for key, _ in self.watchers.values()}
        if not keys:
            return
        started = loop.time()
        number = self.rounds + 1
        found: dict[tuple[str, str], _Listed] = {}
        if len(keys) > 1 and (self.full_pages is None or self.full_pages < len(keys)):
            found = await self._walk(keys, number)
        for key in keys - found.keys():
            await self._slot()
            listed = await self.hook.alist_conversations(
                whatsapp_sender_phone=key[0], customer_phone=key[1], max_retries=0
            )
            match = next((c for c in listed if c.is_between(*key)), None)
            found[key] = _Listed(match, exact=True, round=number)
        self.results.update(found)
        self.rounds = number
        interval = min(i for _, i in self.watchers.values()) if self.watchers else DEFAULT_POLL_INTERVAL
        # What one interval costs: this round's listings plus the reads the last round led to.
        cost, self._spent_at_round = self.requests - self._spent_at_round, self.requests
        from famulor_provider.conversations import polling

        stretched = polling.POLLING_BUDGET.interval(
            self.famulor_conn_id, cost, interval, config.poll_requests_per_minute
        )
        self._next_round_at = started + stretched

    async def _walk(self, keys: set[tuple[str, str]], number: int) -> dict[tuple[str, str], _Listed]:
        """The whole listing, or nothing when it proves dearer than filtered listings."""
        found: dict[tuple[str, str], _Listed] = {}
        pages = 0
        async for page in self.hook.aiter_conversation_pages(max_retries=0, before_page=self._slot):
            pages += 1
            for conversation in page:
                key = (
                    normalize_phone(conversation.sender_phone or ""),
                    normalize_phone(conversation.customer_phone or ""),
                )
                if key in keys:
                    found[key] = _Listed(conversation, exact=False, round=number)
            if pages >= len(keys):  # as dear as the filtered listings already: stop, keep what it found
                self.full_pages = pages + 1
                return found
        self.full_pages = pages
        return {key: found.get(key, _Listed(None, exact=False, round=number)) for key in keys}


# Keyed by event loop (the triggerer runs one; tests make new ones) and connection.
_pollers: dict[tuple[asyncio.AbstractEventLoop, str], ConversationPoller] = {}


def conversation_poller(famulor_conn_id: str) -> ConversationPoller:
    """The poller of ``famulor_conn_id`` shared by every reply trigger of the running event loop."""
    loop = asyncio.get_running_loop()
    poller = _pollers.get((loop, famulor_conn_id))
    if poller is None:
        for stale in [k for k in _pollers if k[0].is_closed()]:
            del _pollers[stale]
        poller = _pollers[(loop, famulor_conn_id)] = ConversationPoller(famulor_conn_id)
    return poller


class WhatsAppReplyTrigger(_PollingTrigger):
    """
    Wait for a customer's reply in the conversation of ``sender_phone`` (or ``sender_id``) with
    ``recipient_phone``, after position ``baseline`` of its history.

    Every reply trigger of a connection in this triggerer shares one :class:`ConversationPoller`:
    per interval the API sees the listing's pages (or one filtered listing per awaited
    conversation, whichever is cheaper) plus one read per conversation whose ``message_count``
    grew. Yields exactly one event: ``{"status": "success", ...}``, ``{"status": "error", ...}``
    for what waiting cannot fix (auth, unknown sender), or ``{"status": "timeout", "message",
    "replies_seen"}`` at ``end_time``. Transient faults are logged and the next
    poll is the retry. Running again after a triggerer restart finds the same reply.

    No event holds the customer's number or words (Airflow logs every event's payload at INFO):
    a success says where the reply is (``conversation_id``, ``sender_phone``: the business
    number, ``baseline``, ``message_index``, ``history_length``) and the resumed sensor reads it
    (``famulor_provider.conversations.replies.resume_reply``); a timeout counts the other replies
    (``replies_seen``).

    :param famulor_conn_id: the Famulor connection.
    :param recipient_phone: the customer (E.164).
    :param sender_id: the sender; its number is looked up when ``sender_phone`` is not given.
    :param sender_phone: the business number.
    :param baseline: the history's length after the send; ``None``: unknown (the first read sets it).
    :param history_lengths_after_send: a send's ``history_lengths_after_send``, for the baseline
        once the sender's number is known (used when ``baseline`` is ``None``).
    :param choices: the accepted answers, or ``None`` for any reply.
    :param poll_interval: seconds between polls (stretched by the connection's polling budget).
    :param end_time: when to give up, as epoch seconds or an ISO 8601 string; ``None``: never.
    """

    def __init__(
        self,
        *,
        recipient_phone: str,
        famulor_conn_id: str = "famulor_default",
        sender_id: int | None = None,
        sender_phone: str | None = None,
        baseline: int | None = None,
        history_lengths_after_send: Mapping[str, int] | None = None,
        choices: Sequence[str] | None = None,
        poll_interval: float = DEFAULT_REPLY_POLL_INTERVAL,
        end_time: float | str | None = None,
    ) -> None:
        if sender_id is None and sender_phone is None:
            raise FamulorValidationError("sender_id", "give sender_id or sender_phone")
        super().__init__(famulor_conn_id, poll_interval, end_time)
        self.recipient_phone = recipient_phone
        self.sender_id = sender_id
        self.sender_phone = sender_phone
        self.baseline = baseline
        self.history_lengths_after_send = (
            None if history_lengths_after_send is None else dict(history_lengths_after_send)
        )
        self.choices = None if choices is None else list(choices)

    def arguments(self) -> dict[str, Any]:
        return {
            "recipient_phone": self.recipient_phone,
            "sender_id": self.sender_id,
            "sender_phone": self.sender_phone,
            "baseline": self.baseline,
            "history_lengths_after_send": self.history_lengths_after_send,
            "choices": self.choices,
        }

    async def _watch(self) -> ReplyWatch:
        """The awaited reply, with the sender's number looked up (shared, hourly) when needed."""
        from famulor_provider.conversations.replies import ReplyWatch, baseline_from_send, sender_phone_of

        phone = self.sender_phone
        if phone is None:
            senders = await shared_senders(self.famulor_conn_id, max_age=SENDER_PHONES_MAX_AGE)
            phone = sender_phone_of(senders, int(self.sender_id or 0), self.famulor_conn_id)
        baseline = self.baseline
        if baseline is None and self.history_lengths_after_send is not None:
            baseline = baseline_from_send(
                {"history_lengths_after_send": self.history_lengths_after_send}, phone
            )
        choices = None if self.choices is None else tuple(self.choices)
        return ReplyWatch(phone, self.recipient_phone, baseline, choices)

    def _timeout_event(self, progress: ReplyProgress | None) -> TriggerEvent:
        """The timeout event: no customer number, no text (Airflow logs the payload at INFO)."""
        seen = 0
        if progress is not None and progress.last_history is not None and progress.watch.baseline is not None:
            seen = len(progress.last_history.customer_messages(progress.watch.baseline))
        what = "reply" if self.choices is None else f"reply in {self.choices}"
        return TriggerEvent(
            {
                "status": "timeout",
                "message": f"Sensor has timed out: no {what} by the end time",
                "replies_seen": seen,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from famulor_provider.transport import MAX_RETRY_AFTER, is_retryable_read

        poller = conversation_poller(self.famulor_conn_id)
        token = id(self)
        progress: ReplyProgress | None = None
        after_round = 0
        try:
            while True:
                wait = self.poll_interval
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    yield self._timeout_event(progress)
                    return
                try:
                    result = await asyncio.wait_for(
                        self._poll(poller, token, progress, after_round), remaining
                    )
                except asyncio.TimeoutError:
                    continue  # the end time came while waiting: the next check ends the loop
                except FamulorError as err:
                    if not is_retryable_read(err) and not isinstance(err, FamulorConversationNotFoundError):
                        yield TriggerEvent(error_event(err))
                        return
                    self.log.warning("Famulor is unavailable for now (%s); still waiting", err)
                    retry_after = getattr(err, "retry_after", None)
                    if retry_after is not None:
                        wait = max(wait, min(float(retry_after), MAX_RETRY_AFTER))
                except Exception as err:
                    yield TriggerEvent(error_event(err))
                    return
                else:
                    progress, after_round, reply = result
                    if reply is not None:
                        from famulor_provider.conversations.replies import found_event

                        yield TriggerEvent(found_event(progress, reply))
                        return
                remaining = self._remaining()
                await asyncio.sleep(wait if remaining is None else max(0.0, min(wait, remaining)))
        finally:
            poller.unregister(token)

    async def _poll(
        self, poller: ConversationPoller, token: int, progress: ReplyProgress | None, after_round: int
    ) -> tuple[ReplyProgress, int, dict[str, Any] | None]:
        """One poll: (what was seen, the round it came from, the reply or ``None``)."""
        from famulor_provider.conversations.replies import ReplyProgress

        if progress is None:
            progress = ReplyProgress(await self._watch())
            poller.register(token, progress.watch.key, self.poll_interval)
        listed = await poller.conversation(progress.watch.key, after_round)
        reply = None
        if progress.needs_read(listed.conversation, exact=listed.exact) and listed.conversation is not None:
            reply = progress.on_history(await poller.history(listed.conversation))
        return progress, listed.round, reply


# ---------------------------------------------------------------------------------------------
# Inbound messages: an event trigger for AssetWatcher (Airflow 3).

try:  # Airflow 3.0+
    from airflow.triggers.base import BaseEventTrigger
except ImportError:  # Airflow 2.11 has no event-driven scheduling; the class still imports
    BaseEventTrigger = BaseTrigger  # type: ignore[misc,assignment]

DEFAULT_INBOUND_POLL_INTERVAL = 60.0

# The asset state stores of the inbound triggers running in this process, by shared stream key
# then trigger object: Airflow injects the store into the trigger instance, while the ack-mode
# producer is built from serialized kwargs and cannot reach the instance (see the class doc).
# Each entry holds the asyncio task that runs the trigger (Airflow's run_trigger): once it is
# done, the store is no longer used, whether or not cleanup() ran.
_inbound_stores: dict[Hashable, dict[int, tuple[Any, asyncio.Task[Any] | None]]] = {}


def _asset_stores(accessors: Any) -> list[Any]:
    """The per-asset accessors behind Airflow's ``AssetStateStoreAccessors`` (one per watched asset).

    A trigger watching several assets gets one ``AssetStateStoreAccessors`` whose bare
    ``aget``/``aset`` raise; Airflow 3.3 exposes its per-asset accessors only as ``_by_name`` and
    ``_by_uri`` (a test pins this). Anything else (one accessor) is used as it is.
    """
    by_name = getattr(accessors, "_by_name", None)
    by_uri = getattr(accessors, "_by_uri", None)
    if by_name is None and by_uri is None:
        return [accessors]
    return [*(by_name or {}).values(), *(by_uri or {}).values()]


def _registered_stores(key: Hashable) -> list[Any]:
    """The stores of the scope's triggers that are running now (stopped ones are dropped)."""
    registered = _inbound_stores.get(key, {})
    stores: dict[Any, None] = {}  # insertion-ordered set; accessors of one asset compare equal
    for instance, (accessors, task) in list(registered.items()):
        if task is not None and task.done():
            registered.pop(instance, None)
            continue
        stores.update(dict.fromkeys(_asset_stores(accessors)))
    return list(stores)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


class WhatsAppInboundMessageTrigger(BaseEventTrigger):
    """
    One event per message a customer writes on WhatsApp, for an ``AssetWatcher`` (Airflow 3).

    Polls ``GET /user/conversations`` (``per_page=100``) and reads ``GET /conversations/{uuid}``
    only for a conversation whose ``message_count`` grew past the cursor; yields one
    ``TriggerEvent`` per new ``role: "user"`` message saying where it is, never whose or what it
    is (Airflow logs every event at INFO and stores it in ``asset_event``): ``conversation_id``,
    ``sender_phone`` (the business number), ``message_index``, ``history_length``,
    ``roles_digest``, ``epoch`` and ``dedupe_key`` (``"{conversation_id}:{message_index}"``, plus
    ``"@{n}"`` once the conversation's history was seen cut ``n`` times). The consuming task
    turns them into the messages with
    :func:`~famulor_provider.conversations.inbound_messages.inbound_messages` (one read per
    conversation). Messages that existed when the watcher first started are history, not events.

    Airflow 3.3+ (the guarantee: no message lost; a duplicate only after a triggerer crash):
    the trigger opts into a shared stream in ack mode. Watchers of the same scope (connection,
    ``sender_phone``, ``customer_phone``) in one triggerer share one producer, hence one poll.
    Airflow calls the producer's ``advance(batch)`` only after the events derived from each
    update were stored in the metadata database (confirmed on the next state sync); only then
    does the cursor move, and its journal is written to the asset state store. The
    producer is built from serialized kwargs and cannot reach the trigger instance into which
    Airflow injected ``asset_state_store``: each instance registers its store in this process
    under the shared stream key when Airflow asks for that key (after the injection, before the
    stream starts), and the producer reads the registered stores at start and at each advance
    (a trigger watching several assets writes the cursor to each; the load takes the most
    advanced). A triggerer killed between storing events and writing the cursor emits those
    messages again after the restart: at most one extra event per message per kill, same
    ``dedupe_key``.

    Airflow 3.0 - 3.2 (no state store, no shared streams): ``run()`` keeps the cursor in memory
    and moves it when the triggerer takes an event; a restart takes a new baseline, so messages
    that arrived while the triggerer was down (or events in its memory at a crash) are lost.
    Airflow 2.11: importable, but there is no event-driven scheduling.

    :param famulor_conn_id: the Famulor connection.
    :param sender_phone: only conversations of this business number; ``None``: every WhatsApp
        conversation of the account.
    :param customer_phone: only conversations with this customer.
    :param poll_interval: seconds from the start of one poll to the start of the next.
    """

    def __init__(
        self,
        *,
        famulor_conn_id: str = "famulor_default",
        sender_phone: str | None = None,
        customer_phone: str | None = None,
        poll_interval: float = DEFAULT_INBOUND_POLL_INTERVAL,
    ) -> None:
        super().__init__()
        self.famulor_conn_id = famulor_conn_id
        self.sender_phone = sender_phone or None
        self.customer_phone = customer_phone or None
        self.poll_interval = max(float(poll_interval), MIN_POLL_INTERVAL)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and JSON primitives only: never the API key (the triggerer loads the connection)."""
        return (
            _classpath(self),
            {
                "famulor_conn_id": self.famulor_conn_id,
                "sender_phone": self.sender_phone,
                "customer_phone": self.customer_phone,
                "poll_interval": self.poll_interval,
            },
        )

    def scope(self) -> tuple[str, str, str | None, str | None]:
        """What one poll covers: the shared stream key."""
        return ("famulor_whatsapp_inbound", self.famulor_conn_id, self.sender_phone, self.customer_phone)

    def cursor_key_prefix(self) -> str:
        """The cursor's key prefix in the asset state store: a digest of the scope (no phone number)."""
        import hashlib

        digest = hashlib.sha256(repr(self.scope()).encode()).hexdigest()[:16]
        return f"famulor_inbound.{digest}"

    def shared_stream_key(self) -> Hashable:
        """The scope; registers this instance's injected state store for the scope's producer.

        Airflow calls this in the task that runs the trigger: the store is used while that task runs.
        """
        key = self.scope()
        store = getattr(self, "asset_state_store", None)
        if store is not None:
            _inbound_stores.setdefault(key, {})[id(self)] = (store, _current_task())
        return key

    def _producer(self, stores: Callable[[], list[Any]]) -> InboundProducer:
        from famulor_provider.conversations.inbound_poll import InboundProducer

        return InboundProducer(
            famulor_conn_id=self.famulor_conn_id,
            sender_phone=self.sender_phone,
            customer_phone=self.customer_phone,
            poll_interval=self.poll_interval,
            stores=stores,
            key_prefix=self.cursor_key_prefix(),
        )

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> InboundProducer:
        """Airflow 3.3 ack mode: one producer per scope, with the stores the scope's watchers registered."""
        trigger = cls(**kwargs)
        key = trigger.scope()
        return trigger._producer(lambda: _registered_stores(key))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        """One event per customer message of each update (none for an update without one).

        Resumed after the update's last event, the filter marks the update handed over: the
        runner bound every event before asking for more (a cancelled runner never asks).
        """
        async for update in shared_stream:
            if update is None:  # the producer's tick after each poll
                continue
            for payload in update.events():
                yield TriggerEvent(payload)
            update.handed_over()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Airflow 3.0 - 3.2: poll by itself; the cursor moves once the triggerer took the events."""
        store = getattr(self, "asset_state_store", None)
        producer = self._producer(lambda: [] if store is None else _asset_stores(store))
        async for update, _ in producer.open_stream():
            if update is None:  # the tick after each poll
                continue
            for event in update.events():
                yield TriggerEvent(event)
            producer.settle(update, stored=True)
            await producer.save()

    async def cleanup(self) -> None:
        """Unregister this instance's state store."""
        stores = _inbound_stores.get(self.scope(), {})
        stores.pop(id(self), None)
        if not stores:
            _inbound_stores.pop(self.scope(), None)
        await super().cleanup()
