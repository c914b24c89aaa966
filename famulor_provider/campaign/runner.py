"""The campaign loop: paced sends at the account's limit, each one recorded in the ledger.

The main thread decides, paces and writes the ledger (an ``attempt`` line before each POST, an
``outcome`` line after); a few worker threads only wait for the API's answers, so a slow answer
does not slow the pace. A 429 holds every sender of the campaign for the API's ``Retry-After``
and the recipient is sent again (nothing was sent); ``SENDER_OFFLINE`` pauses the campaign and
re-checks the sender until ``offline_timeout``; a refusal of one recipient is recorded and the
campaign goes on; an error that concerns every recipient (balance, key, template) stops it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from famulor_provider.campaign.ledger import REFUSED, SENT, UNKNOWN
from famulor_provider.exceptions import (
    FamulorAuthError,
    FamulorConnectionError,
    FamulorDeliveryUnknownError,
    FamulorError,
    FamulorInsufficientBalanceError,
    FamulorRateLimitError,
    FamulorSenderOfflineError,
    FamulorTemplateError,
    FamulorValidationError,
)
from famulor_provider.pacing import SendPacer, send_interval
from famulor_provider.transport import POOL_SIZE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from famulor_provider.campaign.ledger import CampaignLedger
    from famulor_provider.hooks.famulor import FamulorHook
    from famulor_provider.models import WhatsAppMessage

log = logging.getLogger(__name__)

PROGRESS_EVERY = 30.0  # seconds between progress lines
OFFLINE_RECHECK = 60.0  # seconds between sender checks while it is offline
CONNECT_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)  # waits after "could not connect" before giving up
# Errors that concern every recipient: sending on would only repeat them.
STOPPING_ERRORS = (FamulorInsufficientBalanceError, FamulorAuthError, FamulorTemplateError)


class CampaignStopped(FamulorError):
    """The campaign stopped before every recipient was tried; a later try resumes from the ledger.

    :param retryable: whether an Airflow retry can help (False: fix the cause, then clear the task).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class CampaignSettings:
    """What every send of one campaign shares."""

    sender_id: int
    template_id: int
    max_sends_per_second: float
    resend_unknown: bool
    offline_timeout: float


class CampaignRunner:
    """Send a template to recipients once each, resuming from (and writing) a ledger.

    :param hook: a hook on the campaign's connection.
    :param settings: the sender, template, pace and policies.
    :param ledger: the task instance's open ledger.
    :param clock: a monotonic clock (injectable for tests).
    :param sleep: the sleeper (injectable for tests).
    """

    def __init__(
        self,
        hook: FamulorHook,
        settings: CampaignSettings,
        ledger: CampaignLedger,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.hook = hook
        self.settings = settings
        self.ledger = ledger
        self.clock = clock
        self.sleep = sleep
        interval = send_interval(settings.max_sends_per_second)
        # One slot of catch-up keeps the schedule through small delays (an fsync, a busy core);
        # the window below still bounds what reaches the API.
        self.pacer = SendPacer(interval, clock=clock, catch_up=interval)
        # The API counts a send when it arrives, which may be later than we sent it (a new
        # connection, a busy thread): the pacer's 2 % slack does not cover that. So a send also
        # waits one window after the answer to the send ``window_sends`` before it.
        self.window_sends = max(1, int(settings.max_sends_per_second))
        self.window = self.window_sends / settings.max_sends_per_second
        self.answered: deque[list[float | None]] = deque(maxlen=self.window_sends)
        self.workers = max(2, min(POOL_SIZE, round(settings.max_sends_per_second)))
        self.outcomes: Counter[str] = Counter()  # this try's final outcomes
        self.skipped: Counter[str] = Counter()  # recipients an earlier try settled, by state
        self.rate_limited = 0  # answers 429
        self.connect_failures = 0  # "could not connect" in a row
        self.generation = 0  # bumped after each offline pause

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, recipients: Iterable[Mapping[str, Any]], total: int) -> None:
        """Send to every recipient the ledger does not settle; return when all were tried.

        :param recipients: unique, valid recipients (``recipient_phone``, ``recipient_name``,
            ``variables``).
        :param total: how many there are, for progress lines.
        """
        self.total, self.started = total, self.clock()
        self.last_progress = self.started
        in_flight: dict[Future[Any], tuple[Mapping[str, Any], int]] = {}
        again: deque[Mapping[str, Any]] = deque()
        source = iter(recipients)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="famulor-campaign") as pool:
            try:
                while True:
                    recipient = again.popleft() if again else next(source, None)
                    if recipient is None:
                        if not in_flight:
                            break
                        self._collect(in_flight, again, block=True)
                        continue
                    phone = recipient["recipient_phone"]
                    if not self.ledger.should_send(phone, self.settings.resend_unknown):
                        self.skipped[self.ledger.state.get(phone) or SENT] += 1
                        continue
                    while len(in_flight) >= self.workers:
                        self._collect(in_flight, again, block=True)
                    self._wait_for_window()
                    self.pacer.wait("campaign", self.sleep)
                    # Answers that came while waiting may stop, pause or hold the campaign (402,
                    # SENDER_OFFLINE, 429): learn them before this send, not after it.
                    before = (self.generation, self.rate_limited)
                    self._collect(in_flight, again, block=False)
                    if (self.generation, self.rate_limited) != before:
                        again.appendleft(recipient)
                        continue
                    self.ledger.record_attempt(phone)  # durable before the POST
                    answered: list[float | None] = [None]
                    self.answered.append(answered)
                    future = pool.submit(self._send, recipient, answered)
                    in_flight[future] = (recipient, self.generation)
                    self._collect(in_flight, again, block=False)
            except BaseException:
                # Stop sending, but record what the requests in flight did before leaving.
                for future in in_flight:
                    future.cancel()
                self._collect(in_flight, again, block=True, draining=True)
                raise
        self._progress(final=True)

    def _send(self, recipient: Mapping[str, Any], answered: list[float | None]) -> WhatsAppMessage:
        try:
            return self.hook.send_whatsapp_template(
                self.settings.sender_id,
                self.settings.template_id,
                recipient["recipient_phone"],
                variables=recipient.get("variables"),
                recipient_name=recipient.get("recipient_name"),
            )
        finally:
            answered[0] = self.clock()

    def _wait_for_window(self) -> None:
        """Keep any window of the API's limit free of more than ``window_sends`` sends.

        The API counted each send at some time before its answer, so one window after the answer
        to the send ``window_sends`` back is safe. A send still unanswered (a slow answer) does not
        hold the campaign: the pacer's spacing is all that applies then.
        """
        if len(self.answered) < self.window_sends:
            return
        answered = self.answered[0][0]
        if answered is not None:
            delay = answered + self.window - self.clock()
            if delay > 0:
                self.sleep(delay)

    def _collect(
        self,
        in_flight: dict[Future[Any], tuple[Mapping[str, Any], int]],
        again: deque[Mapping[str, Any]],
        *,
        block: bool,
        draining: bool = False,
    ) -> None:
        """Record finished sends (at least one when ``block``; all when ``draining``)."""
        while in_flight:
            done, _ = wait(list(in_flight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in done:
                recipient, generation = in_flight.pop(future)
                self._record(future, recipient, generation, again, draining)
            if not draining:
                break
        if not draining:
            self._progress()

    def _record(
        self,
        future: Future[Any],
        recipient: Mapping[str, Any],
        generation: int,
        again: deque[Mapping[str, Any]],
        draining: bool,
    ) -> None:
        phone = recipient["recipient_phone"]
        if future.cancelled():  # never started: nothing was sent
            self._outcome(phone, REFUSED, error="the campaign stopped before this send")
            return
        error = future.exception()
        if error is None:
            message = future.result()
            self.connect_failures = 0
            self._outcome(phone, SENT, message_id=message.message_id, status=message.status)
            return
        if isinstance(error, FamulorDeliveryUnknownError):
            self._outcome(phone, UNKNOWN, error_code=error.error_code, error=error)
            return
        if not isinstance(error, FamulorError) or (
            isinstance(error, FamulorConnectionError) and error.request_sent
        ):
            self._outcome(phone, UNKNOWN, error=f"{type(error).__name__}: {error}")
            return
        # Everything below was refused: nothing was sent, so this recipient may be sent again.
        code = getattr(error, "error_code", None)
        retry = not draining and isinstance(
            error, FamulorRateLimitError | FamulorSenderOfflineError | FamulorConnectionError
        )
        self._outcome(phone, REFUSED, final=not retry, error_code=code, error=error)
        if draining:
            return
        if isinstance(error, FamulorRateLimitError):
            self.rate_limited += 1
            hold = error.retry_after if error.retry_after is not None else 1.0
            log.warning("The API answered 429; holding sends for %.1f s", hold)
            self.pacer.reserve("campaign", interval=hold)
        elif isinstance(error, FamulorSenderOfflineError):
            if generation == self.generation:  # not a send that left before the last pause
                self._wait_for_sender()
                self.generation += 1
        elif isinstance(error, FamulorConnectionError):
            self._wait_for_connection(error)
        elif isinstance(error, STOPPING_ERRORS):
            raise CampaignStopped(
                f"Campaign stopped: {error}. Nothing more was sent; fix the cause, then clear the task "
                "to resume where it stopped.",
                retryable=False,
            ) from error
        elif isinstance(error, FamulorValidationError):
            raise error
        if retry:
            again.append(recipient)

    def _outcome(self, phone: str, outcome: str, *, final: bool = True, **fields: Any) -> None:
        self.ledger.record_outcome(phone, outcome, **fields)
        if final:
            self.outcomes[outcome] += 1

    # -- pauses -----------------------------------------------------------------------------------

    def _wait_for_sender(self) -> None:
        """Pause until the sender is online again, or stop after ``offline_timeout``."""
        sender_id, timeout = self.settings.sender_id, self.settings.offline_timeout
        deadline = self.clock() + timeout
        log.warning(
            "Sender %s is offline; pausing the campaign (up to %g s)",
            sender_id,
            self.settings.offline_timeout,
        )
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise CampaignStopped(
                    f"Campaign paused: sender {sender_id} stayed offline for {timeout:g} s. "
                    "A retry resumes where it stopped.",
                    retryable=True,
                )
            self.sleep(min(OFFLINE_RECHECK, max(1.0, timeout / 10), remaining))
            try:
                senders = self.hook.list_whatsapp_senders(status="all")
            except FamulorError as err:
                log.warning("Could not check sender %s (%s); still paused", sender_id, err)
                continue
            if any(s.id == sender_id and s.is_online for s in senders):
                log.info("Sender %s is online again; resuming", sender_id)
                return

    def _wait_for_connection(self, error: FamulorConnectionError) -> None:
        """Back off after "could not connect"; stop when the API stays unreachable."""
        self.connect_failures += 1
        if self.connect_failures > len(CONNECT_BACKOFF):
            raise CampaignStopped(
                f"Campaign paused: the API stayed unreachable ({error}). A retry resumes where it stopped.",
                retryable=True,
            ) from error
        self.sleep(CONNECT_BACKOFF[self.connect_failures - 1])

    # -- reporting --------------------------------------------------------------------------------

    def _progress(self, *, final: bool = False) -> None:
        now = self.clock()
        if not final and now - self.last_progress < PROGRESS_EVERY:
            return
        self.last_progress = now
        settled = sum(self.skipped.values())
        done = settled + sum(self.outcomes.values())
        elapsed = max(now - self.started, 1e-9)
        rate = (done - settled) / elapsed
        left = max(self.total - done, 0)
        eta = f"{left / rate:.0f} s" if rate > 0 and left else "-"
        log.info(
            "Campaign %s: %d/%d recipients (%.1f %%), %.2f sends/s, ETA %s; this try: %d sent, %d unknown, "
            "%d refused, %d answered 429; settled by earlier tries: %s",
            "done" if final else "progress",
            done,
            self.total,
            100.0 * done / self.total if self.total else 100.0,
            rate,
            eta,
            self.outcomes[SENT],
            self.outcomes[UNKNOWN],
            self.outcomes[REFUSED],
            self.rate_limited,
            dict(self.skipped) or "none",
        )
