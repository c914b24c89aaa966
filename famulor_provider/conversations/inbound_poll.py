"""Polling Famulor for inbound WhatsApp messages, and how Airflow 3.3 makes it lose nothing.

**One poll.** :class:`InboundPoller` walks ``GET /user/conversations`` (``per_page=100``) and
compares each conversation's ``message_count`` with what was last turned into events (the
:class:`~famulor_provider.conversations.inbound_cursor.InboundCursor`, plus what was emitted and is not yet
acknowledged); only a conversation whose count grew is read with ``GET /conversations/{uuid}``.
A poll therefore costs the listing's pages plus one read per changed conversation, whatever the
listing's order. Early stop: when every page of the last full pass was ordered by
``updated_at`` (most recent first), a poll stops after the first page whose last (least
recently active) conversation did not change and is strictly older than the newest activity the
previous poll saw, then walks a few more pages of the *sweep*: the rest of the listing, spread
over about ``full_pass_every`` polls (resumed from the listing cursor where the last poll left
it), so a listing that only seemed ordered delays a message by at most one round, never loses
it, and no poll spends a whole walk at once. The sweep takes what the front and the reads left
of the poll's budget, at least one page. Each request takes a slot of the connection's polling
budget (:mod:`.polling`, shared with the reply sensor), and the interval stretches when a poll
costs more than the budget allows.

**Airflow 3.3.2's machinery** (``airflow/triggers/base.py``, ``triggers/shared_stream.py``,
``jobs/triggerer_job_runner.py``), as this module relies on it:

- The triggerer injects ``trigger.asset_state_store`` (an ``AssetStateStoreAccessors`` over the
  watched assets) into a ``BaseEventTrigger`` that watches assets, after building it from its
  serialized kwargs and before ``run_trigger`` starts. The bare ``aget``/``aset`` work only when
  the trigger watches exactly one asset (identical watchers on several assets are one trigger
  instance); per-asset accessors sit in ``_by_name``/``_by_uri``. Values are JSON, written whole;
  above ``[state_store] max_value_storage_bytes`` (65,535) the worker only logs a warning.
- ``run_trigger`` reads ``shared_stream_key()`` once, after the injection, then subscribes the
  trigger to a ``SharedStreamManager`` group for that key and iterates
  ``filter_shared_stream(stream)`` instead of ``run()``. The first subscriber creates the group,
  whose poll task (started on the next loop turn) calls the classmethod
  ``create_shared_stream_producer(kwargs)`` with the first trigger's serialized kwargs: overriding
  it is *ack mode*. The producer's ``open_stream()`` yields ``(raw_event, broker_payload)``; each
  raw event is broadcast to the subscribers online at that moment.
- Every ``TriggerEvent`` a filter yields while it holds a raw event is bound to it
  (``bind_pending_event`` gives it a sequence number) and queued; the triggerer's supervisor
  writes it to the metadata database (an ``asset_event`` row) and confirms the sequence number on
  the next state sync (about 1-2 s). A raw event is resolved for a subscriber once the filter
  pulled the next one and every event bound to it is confirmed; then the pump calls
  ``producer.advance(batch)`` with a contiguous, in-order prefix of resolved events, each with its
  ``broker_payload`` and an ``AdvanceOutcome`` (``is_clean``: every subscriber acked, none failed).
  An event not confirmed within ``[triggerer] shared_stream_ack_timeout`` fails its subscriber.
- All of that is in memory. A SIGKILL loses the events queued but not yet written, and the
  resolutions not yet advanced; nothing is flushed. In 3.1 there is neither store nor shared
  stream (``run()`` only); 2.11 has no ``BaseEventTrigger``.

**The guarantee on 3.3.** :class:`InboundProducer` is the ack-mode producer: a raw event is one
conversation's new messages (:class:`ConversationUpdate`), also its payload; after each poll it
yields a tick (``None``), so that the poll's last update resolves without waiting for the next
customer message. ``advance`` moves the cursor over clean updates only (and only contiguously:
the cursor must be at ``start``), and only over those that every acknowledging subscriber took
whole (:meth:`ConversationUpdate.handed_over`: Airflow 3.3.2's ``unsubscribe`` counts a watcher
cancelled between two events of an update as having acknowledged it), then writes the journal
to the asset state store (one value, see :mod:`famulor_provider.conversations.inbound_cursor`:
each store access from the triggerer is a round trip through its supervisor); an update that is not clean
is forgotten, so the next poll reads the conversation again from the cursor. The producer cannot
reach the trigger instance that holds the injected store: each instance registers its store in
this process under the shared stream key from ``shared_stream_key()`` (after the injection,
before the stream starts) and the producer reads the registered stores of the triggers whose
task still runs at start and at each advance. Hence every message is written to
``asset_event`` before the cursor passes it (none lost across kills, restarts or a move to
another triggerer), and a kill after that write but before the cursor write (about one state
sync plus one store write) makes the next triggerer
emit those messages once more, with the same ``dedupe_key``: at most one extra event per message
per kill, none within one triggerer's lifetime (unless Airflow could not confirm a write within
``[triggerer] shared_stream_ack_timeout``: the update is then read and emitted again).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from famulor_provider.conversations.inbound_cursor import CursorStore, InboundCursor
from famulor_provider.conversations.inbound_messages import roles_digest
from famulor_provider.exceptions import FamulorError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from famulor_provider.conversations.inbound_cursor import StateStore
    from famulor_provider.hooks.famulor import FamulorHook
    from famulor_provider.models import ConversationHistory, WhatsAppConversation

log = logging.getLogger(__name__)

PER_PAGE = 100  # the API's maximum
DEFAULT_FULL_PASS_EVERY = 10
SAME_SECOND_MARGIN = 2.0  # seconds: clock skew allowed between the API's updated_at and ours


@dataclass(frozen=True)
class ConversationUpdate:
    """
    The messages ``[start, end)`` of one conversation, as read after its ``message_count`` grew.

    ``indices`` are the positions of the customer's messages (``role: "user"``) of that range;
    the range may hold none (only assistant messages), and still moves the cursor once
    acknowledged. It holds no customer number, name or text: nothing of it is personal data.
    """

    conversation_id: str
    start: int
    end: int
    sender_phone: str | None  # the business number
    indices: tuple[int, ...] = ()
    roles_digest: str = ""  # who wrote each message [0, end): see inbound_messages.roles_digest
    epoch: int = 0  # how many times the conversation's history was seen cut
    # One entry per subscriber that took every event of the update (see handed_over()).
    handovers: list[bool] = field(default_factory=list, compare=False, repr=False)

    def handed_over(self) -> None:
        """A subscriber's filter came back after yielding the update's last event: Airflow has it.

        Airflow 3.3's runner binds an event to the raw event (and queues it) only after awaiting
        its log line, before it asks the filter for the next: a filter resumed after its last
        yield therefore knows that every event it yielded was bound. A filter cancelled in that
        await never comes back, and the update stays unconfirmed for it (see ``advance``).
        """
        self.handovers.append(True)

    def dedupe_key(self, message_index: int) -> str:
        """``"{conversation_id}:{message_index}"``, with ``"@{epoch}"`` once the history was cut."""
        key = f"{self.conversation_id}:{message_index}"
        return f"{key}@{self.epoch}" if self.epoch else key

    def events(self) -> list[dict[str, Any]]:
        """One payload per customer message: where it is, never whose or what it is (Airflow logs
        each event at INFO); :func:`~famulor_provider.conversations.inbound_messages.inbound_messages`
        turns them into the messages."""
        return [
            {
                "conversation_id": self.conversation_id,
                "sender_phone": self.sender_phone,
                "message_index": index,
                "history_length": self.end,
                "roles_digest": self.roles_digest,
                "epoch": self.epoch,
                "dedupe_key": self.dedupe_key(index),
            }
            for index in self.indices
        ]


@dataclass
class PollStats:
    """What the last poll cost and saw."""

    pages: int = 0
    reads: int = 0
    conversations: int = 0
    full_pass: bool = False
    stopped_early: bool = False
    swept: int = 0  # pages of the sweep (see InboundPoller.poll)


class _OrderCheck:
    """Whether a walk's ``updated_at`` values never increase, and the newest one seen.

    :param newest: the newest ``updated_at`` seen before this walk.
    """

    def __init__(self, newest: str | None) -> None:
        self.ordered = True
        self.last: str | None = None
        self.newest = newest

    def see(self, updated_at: str | None) -> None:
        """Take the next conversation's ``updated_at`` (``"YYYY-MM-DD HH:MM:SS"``: compares as text)."""
        if updated_at is None or (self.last is not None and updated_at > self.last):
            self.ordered = False
        self.last = updated_at
        if updated_at is not None and (self.newest is None or updated_at > self.newest):
            self.newest = updated_at

    def behind(self, high_water: str | None) -> bool:
        """Ordered so far, and the last conversation is strictly older than ``high_water``.

        Everything after it in an activity-ordered listing then last changed before the previous
        walk saw ``high_water``; a tie (second resolution) proves nothing, so the walk goes on.
        """
        return self.ordered and self.last is not None and high_water is not None and self.last < high_water


class InboundPoller:
    """
    Find new customer messages in one scope (connection, optional sender, optional customer).

    :param hook: the Famulor hook (async methods are used).
    :param cursor: the acknowledged counts (from the store), or ``None`` for a first start.
    :param sender_phone: only conversations of this business number (``whatsapp_sender_phone``).
    :param customer_phone: only conversations with this customer.
    :param full_pass_every: the polls over which a sweep of the whole listing is spread (with
        ``spread_full_pass=False``: every n-th poll walks every page at once, the old schedule).
    :param spread_full_pass: spread the full pass over polls (the default).
    """

    def __init__(
        self,
        hook: FamulorHook,
        cursor: InboundCursor | None = None,
        *,
        sender_phone: str | None = None,
        customer_phone: str | None = None,
        full_pass_every: int = DEFAULT_FULL_PASS_EVERY,
        spread_full_pass: bool = True,
    ) -> None:
        self.hook = hook
        self.cursor = cursor
        self.spread_full_pass = spread_full_pass
        self.listing_pages = 1  # pages of the last complete walk (sizes the sweep)
        self.sweep_cursor: str | None = None  # where the sweep goes on (None: after the front)
        self._round_pages = 0
        self.sender_phone = sender_phone
        self.customer_phone = customer_phone
        self.full_pass_every = max(1, int(full_pass_every))
        # Emitted but not acknowledged: conversation -> end of the last update emitted.
        self.pending: dict[str, int] = {}
        self.ordered_by_activity = False  # proven by the last full pass
        self.high_water: str | None = None  # the most recent updated_at seen so far
        self.polls = 0
        self.stats = PollStats()
        # For conversations listed without message_count: the updated_at their last read saw, and
        # when that read was (UTC, less SAME_SECOND_MARGIN), as the API writes times.
        self.activity: dict[str, tuple[str | None, str]] = {}
        self._warned_no_count = False

    def _no_count(self) -> None:
        if not self._warned_no_count:
            self._warned_no_count = True
            log.warning(
                "The conversation listing left out message_count: the inbound watcher reads each "
                "conversation whose updated_at changed (one request each, more of the polling budget)"
            )

    def _activity_changed(self, conversation: WhatsAppConversation) -> bool:
        """For a conversation listed without ``message_count``: whether to read it in this poll.

        When ``updated_at`` moved, or when it is not clearly older than the last read (a message
        written later in the same second leaves ``updated_at`` as it was).
        """
        if conversation.id not in self.activity:
            return True
        updated_at, read_at = self.activity[conversation.id]
        return conversation.updated_at != updated_at or (updated_at is not None and updated_at >= read_at)

    def _read_now(self, conversation: WhatsAppConversation) -> None:
        read_at = datetime.now(timezone.utc) - timedelta(seconds=SAME_SECOND_MARGIN)
        self.activity[conversation.id] = (conversation.updated_at, read_at.strftime("%Y-%m-%d %H:%M:%S"))

    def _filters(self) -> dict[str, Any]:
        return {
            "type": "whatsapp",
            "whatsapp_sender_phone": self.sender_phone,
            "customer_phone": self.customer_phone,
            "per_page": PER_PAGE,
            "before_page": self._slot,
        }

    async def _slot(self) -> None:
        """Take one request's slot of the connection's polling budget (shared with the reply sensor)."""
        from famulor_provider.conversations.polling import POLLING_BUDGET

        config = await self.hook.aget_config()
        await POLLING_BUDGET.acquire(self.hook.famulor_conn_id, config.poll_requests_per_minute)

    async def take_baseline(self) -> InboundCursor:
        """Record every conversation's current count as history (a first start: no events)."""
        cursor = InboundCursor()
        stats = PollStats(full_pass=True)
        order = _OrderCheck(None)
        async for page in self.hook.aiter_conversation_pages(**self._filters()):
            stats.pages += 1
            for conversation in page:
                stats.conversations += 1
                order.see(conversation.updated_at)
                count = conversation.message_count
                if count is None:  # the history's length is what is history: read it
                    self._no_count()
                    await self._slot()
                    history = await self._history(conversation)
                    if history is None:
                        continue
                    count = len(history.messages)
                    self._read_now(conversation)
                cursor.put(conversation.id, int(count))
        self.cursor = cursor
        self.stats = stats
        self.listing_pages = stats.pages
        self.ordered_by_activity, self.high_water = order.ordered, order.newest
        return cursor

    def seen(self, conversation_id: str) -> int:
        """
        The count up to which a conversation's messages were emitted (acknowledged or not).

        :param conversation_id: the conversation's ``id``.
        """
        if conversation_id in self.pending:
            return self.pending[conversation_id]
        assert self.cursor is not None
        return self.cursor.get(conversation_id) or 0

    async def _pages(
        self, cursor: str | None
    ) -> AsyncIterator[tuple[list[WhatsAppConversation], str | None]]:
        """The listing's pages from ``cursor`` on, each with its ``next_cursor``; a slot before each."""
        from famulor_provider.exceptions import FamulorResponseError

        seen: set[str] = set()
        while True:
            await self._slot()
            filters = {key: value for key, value in self._filters().items() if key != "before_page"}
            page, cursor = await self.hook.aget_conversation_page(cursor, **filters)
            yield page, cursor
            if cursor is None:
                return
            if cursor in seen:  # a loop would poll forever
                raise FamulorResponseError(
                    "GET /user/conversations returned a next_cursor it returned before"
                )
            seen.add(cursor)

    def _changes(
        self, page: list[WhatsAppConversation], order: _OrderCheck, stats: PollStats
    ) -> tuple[list[tuple[WhatsAppConversation, int]], bool]:
        """A page's changed conversations (with where they stand), and whether its last is unchanged."""
        assert self.cursor is not None
        changed: list[tuple[WhatsAppConversation, int]] = []
        last_unchanged = False
        for conversation in page:
            stats.conversations += 1
            order.see(conversation.updated_at)
            seen = self.seen(conversation.id)
            if conversation.message_count is None:
                self._no_count()
                last_unchanged = not self._activity_changed(conversation)
                if not last_unchanged:
                    changed.append((conversation, seen))
                continue
            count = int(conversation.message_count)
            last_unchanged = count <= seen
            if count > seen:
                changed.append((conversation, seen))
            elif count < seen and conversation.id not in self.pending:
                # Fewer messages than covered (the history was cut): start over from there,
                # in a new epoch (the messages now at those positions are other messages).
                self.cursor.cut(conversation.id, count)
        return changed, last_unchanged

    async def _read_changed(
        self, changed: list[tuple[WhatsAppConversation, int]], stats: PollStats
    ) -> AsyncIterator[ConversationUpdate]:
        for conversation, seen in changed:
            await self._slot()
            update = await self._read(conversation, seen)
            stats.reads += 1
            if update is not None:
                self.pending[conversation.id] = update.end
                yield update

    def sweep_size(self, budget: int | None, used: int) -> int:
        """
        How many pages of the sweep this poll walks.

        The share that completes a round in ``full_pass_every`` polls, less what the poll already
        spent of ``budget`` (the requests its interval allows), but at least one page.

        :param budget: the requests one poll may make within its interval, or ``None``.
        :param used: the requests the poll made so far.
        """
        share = max(1, -(-self.listing_pages // self.full_pass_every))
        return share if budget is None else max(1, min(share, budget - used))

    async def poll(self, budget: int | None = None) -> AsyncIterator[ConversationUpdate]:
        """
        Walk the listing and yield an update per conversation whose count grew, as found.

        Unless the listing is proven ordered by activity, the poll walks every page. Otherwise
        it walks the front (early stop), then the next few pages of the *sweep*: a walk over
        the rest of the listing spread over the polls (about ``full_pass_every`` of them), so
        that a listing that only seemed ordered delays a message by at most one round, and no
        poll spends a whole walk's requests at once (which would delay the new messages behind
        it). The sweep resumes from the listing cursor where the previous poll left it.

        :param budget: the requests one poll may make within its interval: the sweep takes
            what the front and the reads left of it (at least one page).
        """
        if self.cursor is None:
            raise RuntimeError("take_baseline() or a stored cursor must come before poll()")
        self.polls += 1
        full = not self.ordered_by_activity or (
            not self.spread_full_pass and self.polls % self.full_pass_every == 0
        )
        stats = self.stats = PollStats(full_pass=full)
        order = _OrderCheck(self.high_water)
        front_end: str | None = None
        async for page, next_cursor in self._pages(None):
            stats.pages += 1
            changed, last_unchanged = self._changes(page, order, stats)
            async for update in self._read_changed(changed, stats):
                yield update
            if not full and last_unchanged and order.behind(self.high_water):
                stats.stopped_early = True
                front_end = next_cursor
                break
        if full:
            self.ordered_by_activity = order.ordered
        self.high_water = order.newest
        if front_end is None:  # every page was walked: a round is complete
            self.listing_pages = stats.pages
            self.sweep_cursor = None
            return
        if not self.spread_full_pass:
            return
        sweep = _OrderCheck(None)
        pages = self.sweep_size(budget, stats.pages + stats.reads)
        async for page, next_cursor in self._pages(self.sweep_cursor or front_end):
            stats.pages += 1
            stats.swept += 1
            self._round_pages += 1
            changed, _ = self._changes(page, sweep, stats)
            async for update in self._read_changed(changed, stats):
                yield update
            self.sweep_cursor = next_cursor
            if next_cursor is None:  # the round is complete; the next starts after the front
                self.listing_pages = self._round_pages + 1
                self._round_pages = 0
                break
            if stats.swept >= pages:
                break
        if not sweep.ordered:  # the listing is not ordered by activity after all: walk it all
            self.ordered_by_activity = False

    async def _history(self, conversation: WhatsAppConversation) -> ConversationHistory | None:
        from famulor_provider.exceptions import FamulorConversationNotFoundError

        try:
            return await self.hook.aget_conversation(conversation.id)
        except FamulorConversationNotFoundError:
            log.info("Conversation %s was deleted after the listing; skipped", conversation.id)
            return None

    async def _read(self, conversation: WhatsAppConversation, seen: int) -> ConversationUpdate | None:
        history = await self._history(conversation)
        if history is None:
            return None
        end = len(history.messages)
        if conversation.message_count is None:
            self._read_now(conversation)
            if end < seen and conversation.id not in self.pending:
                assert self.cursor is not None
                self.cursor.cut(conversation.id, end)
                seen = end
        if end <= seen:
            return None
        return ConversationUpdate(
            conversation_id=conversation.id,
            start=seen,
            end=end,
            sender_phone=history.sender_phone or conversation.sender_phone,
            indices=tuple(message.index for message in history.messages[seen:end] if message.is_customer),
            roles_digest=roles_digest(history.messages),
            epoch=self.cursor.epoch(conversation.id) if self.cursor is not None else 0,
        )

    def acknowledge(self, conversation_id: str, start: int, end: int) -> bool:
        """
        Move the cursor over an update whose events Airflow stored; return whether it moved.

        Only a contiguous update moves it (the cursor is at ``start``): after a released update
        the cursor stays behind, and the next poll reads the conversation again from there.

        :param conversation_id: the update's conversation.
        :param start: the update's ``start``.
        :param end: the update's ``end``.
        """
        assert self.cursor is not None
        if (self.cursor.get(conversation_id) or 0) != start:
            self.release(conversation_id)
            return False
        self.cursor.put(conversation_id, end)
        if self.pending.get(conversation_id) == end:
            del self.pending[conversation_id]
        return True

    def release(self, conversation_id: str) -> None:
        """
        Forget what was emitted for a conversation: the next poll reads it again from the cursor.

        Called for an update whose events were not all stored; a later update of the same
        conversation still in flight then cannot move the cursor (it is not contiguous).

        :param conversation_id: the update's conversation.
        """
        self.pending.pop(conversation_id, None)
        self.activity.pop(conversation_id, None)  # listed without message_count: read it again


# ---------------------------------------------------------------------------------------------
# The poll loop, as the producer of an Airflow 3.3 shared stream in ack mode (and for run()).

try:  # Airflow 3.3+
    from airflow.triggers.shared_stream import SharedStreamProducer as _ProducerBase
except ImportError:  # Airflow 2.11 - 3.2: no shared streams; run() drives the producer itself
    _ProducerBase = object  # type: ignore[assignment,misc]


class InboundProducer(_ProducerBase):
    """
    Poll one scope forever: yield ``(update, (conversation_id, start, end))``; move the cursor at advance.

    ``stores()`` returns the asset state store accessors to keep the cursor in (read at start,
    written after each advance); with none, the cursor lives in memory only.

    :param famulor_conn_id: the Famulor connection.
    :param sender_phone: the scope's business number, or ``None``.
    :param customer_phone: the scope's customer, or ``None``.
    :param poll_interval: seconds from the start of one poll to the start of the next.
    :param stores: returns the state store accessors of the assets watched now.
    :param key_prefix: the cursor's key prefix in the stores.
    """

    def __init__(
        self,
        *,
        famulor_conn_id: str,
        sender_phone: str | None,
        customer_phone: str | None,
        poll_interval: float,
        stores: Callable[[], list[StateStore]],
        key_prefix: str,
        full_pass_every: int = DEFAULT_FULL_PASS_EVERY,
        spread_full_pass: bool = True,
    ) -> None:
        self.famulor_conn_id = famulor_conn_id
        self.spread_full_pass = spread_full_pass
        self.sender_phone = sender_phone
        self.customer_phone = customer_phone
        self.poll_interval = poll_interval
        self.full_pass_every = full_pass_every
        self._stores = stores
        self.cursor_store = CursorStore([], key_prefix)
        self.poller: InboundPoller | None = None

    def _new_poller(self) -> InboundPoller:
        from famulor_provider.hooks.famulor import FamulorHook

        return InboundPoller(
            FamulorHook(self.famulor_conn_id),
            sender_phone=self.sender_phone,
            customer_phone=self.customer_phone,
            full_pass_every=self.full_pass_every,
            spread_full_pass=self.spread_full_pass,
        )

    async def _wait_after(self, err: FamulorError) -> float:
        """Seconds to wait after a failed poll, or raise when waiting cannot fix it."""
        from famulor_provider.transport import MAX_RETRY_AFTER, is_retryable_read

        if not is_retryable_read(err):
            raise err
        wait = self.poll_interval
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None:  # the API said when: polling sooner only earns another 429
            wait = max(wait, min(float(retry_after), MAX_RETRY_AFTER))
        log.warning("Famulor is unavailable for now (%s); next inbound poll in %g s", err, wait)
        return wait

    async def start(self) -> InboundPoller:
        """Load the stored cursor, or take the baseline (history) and store it."""
        poller = self.poller = self._new_poller()
        self.cursor_store.stores = self._stores()
        if not self.cursor_store.stores:
            log.warning(
                "No asset state store for the inbound cursor: it lives in memory only, so a restart "
                "treats the messages that arrived while the trigger was down as history"
            )
        poller.cursor = await self.cursor_store.load()
        if poller.cursor is not None:
            log.info("Inbound cursor loaded: %d conversation(s)", len(poller.cursor))
            return poller
        while True:
            try:
                cursor = await poller.take_baseline()
                break
            except FamulorError as err:
                await asyncio.sleep(await self._wait_after(err))
        log.info("Inbound watcher started: %d conversation(s) exist, their messages are history", len(cursor))
        await self.save()
        return poller

    async def open_stream(
        self,
    ) -> AsyncIterator[tuple[ConversationUpdate, ConversationUpdate] | tuple[None, None]]:
        """Poll every ``poll_interval`` seconds; yield each update with its advance payload, then a tick."""
        poller = self.poller or await self.start()
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            wait = self.poll_interval
            updates = 0
            try:
                async for update in poller.poll(budget=await self._poll_budget()):
                    updates += 1
                    yield update, update
            except FamulorError as err:
                wait = await self._wait_after(err)
            # A tick: a subscriber resolves a raw event only when it pulls the next one, so the
            # poll's last update would otherwise wait for the next customer message to be advanced.
            yield None, None
            elapsed = loop.time() - started
            stats = poller.stats
            log.log(
                logging.INFO if updates or stats.full_pass else logging.DEBUG,
                "Inbound poll: %d page(s), %d conversation(s) read, %d with new messages, %.2f s%s",
                stats.pages,
                stats.reads,
                updates,
                elapsed,
                f" (stopped early: listing ordered by activity; {stats.swept} page(s) of the sweep)"
                if stats.stopped_early
                else "",
            )
            wait = max(wait, await self._budgeted_interval(stats.pages + stats.reads))
            if elapsed > wait:
                log.warning(
                    "The inbound poll took %.1f s, longer than its interval (%g s): the next starts now",
                    elapsed,
                    wait,
                )
            await asyncio.sleep(max(0.0, wait - elapsed))

    async def _poll_budget(self) -> int:
        """The requests one poll may make within its interval at the connection's budget."""
        assert self.poller is not None
        config = await self.poller.hook.aget_config()
        return int(config.poll_requests_per_minute * self.poll_interval / 60.0)

    async def _budgeted_interval(self, requests: int) -> float:
        """The poll interval, stretched when one poll's requests exceed the connection's budget."""
        from famulor_provider.conversations.polling import POLLING_BUDGET

        assert self.poller is not None
        config = await self.poller.hook.aget_config()
        return POLLING_BUDGET.interval(
            self.famulor_conn_id, requests, self.poll_interval, config.poll_requests_per_minute
        )

    def settle(self, update: ConversationUpdate, stored: bool) -> None:
        """
        Move the cursor over an update whose events were stored, or forget it so it is read again.

        :param update: the update (its advance payload).
        :param stored: whether every event of the update was stored.
        """
        assert self.poller is not None
        if stored:
            self.poller.acknowledge(update.conversation_id, update.start, update.end)
        else:
            self.poller.release(update.conversation_id)

    async def save(self) -> None:
        """Write what changed in the cursor (its journal, or a compaction) to every current store."""
        assert self.poller is not None and self.poller.cursor is not None
        self.cursor_store.stores = self._stores()
        if self.cursor_store.stores:
            await self.cursor_store.save(self.poller.cursor)

    async def advance(self, batch: Sequence[Any]) -> None:
        """
        Airflow stored the events of these updates, or did not: settle, save.

        An update counts as stored when it is clean (``outcome.is_clean``) *and* every subscriber
        Airflow counts as having acknowledged it took all its events (:meth:`ConversationUpdate.handed_over`):
        Airflow 3.3.2's ``unsubscribe`` also counts a subscriber cancelled while it still held
        the update, before its remaining events were bound.

        :param batch: Airflow's ``AdvanceItem`` list, in fan-out order.
        """
        for item in batch:
            update = item.broker_payload
            if update is None:  # the tick after a poll
                continue
            outcome = item.outcome
            stored = outcome.is_clean and len(update.handovers) >= outcome.acked
            if outcome.is_clean and not stored:
                log.info(
                    "An inbound watcher stopped before Airflow took every event of conversation %s: "
                    "it is read again from the cursor",
                    update.conversation_id,
                )
            self.settle(update, stored)
        try:
            await self.save()
        except Exception:
            # The journal stays in memory and the next advance writes it again; meanwhile the
            # stored cursor is behind (a restart would repeat events), never ahead.
            log.warning("Could not write the inbound cursor to the asset state store", exc_info=True)
