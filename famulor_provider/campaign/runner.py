"""The campaign loop: paced sends at the account's limit, each one recorded in the ledger.

The main thread decides, paces and writes the ledger (an ``attempt`` line before each POST, an
``outcome`` line after); a few worker threads only wait for the API's answers, so a slow answer
does not slow the pace. A 429 holds every send of the campaign until ``Retry-After`` (at most
60 s) after that 429 arrived, and the recipient is sent again (nothing was sent); holds that
overlap end at the latest of their ends, never at their sum. ``SENDER_OFFLINE`` pauses the
campaign and re-checks the sender until ``offline_timeout``; a refusal of one recipient is
recorded and the campaign goes on (``rejected`` when no retry can change it, see
:data:`REJECTION_CODES`; ``refused`` otherwise, and a later try sends it again); an error that
concerns every recipient (balance, key, template) stops it.

Per-recipient log lines show phone numbers as :func:`famulor_provider.privacy.phone_for_log`
does (the switch is read once per run); the hook's two INFO lines per send are shown at DEBUG
only, so a campaign's log holds counts, not numbers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from famulor_provider.campaign.ledger import REFUSED, REJECTED, SENT, UNKNOWN
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
from famulor_provider.privacy import full_phone_numbers_in_logs, mask_phone
from famulor_provider.transport import POOL_SIZE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from famulor_provider.campaign.ledger import CampaignLedger
    from famulor_provider.hooks.famulor import FamulorHook
    from famulor_provider.models import WhatsAppMessage

log = logging.getLogger(__name__)

PROGRESS_EVERY = 30.0  # seconds between progress lines
OFFLINE_RECHECK = 60.0  # seconds between sender checks while it is offline
CONNECT_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)  # waits after "could not connect" before giving up
MAX_HOLD = 60.0  # a 429's Retry-After is honoured up to this many seconds, as in the hook
DEFAULT_HOLD = 1.0  # a 429 without Retry-After holds this long
THREAD_PREFIX = "famulor-campaign"
LEASE_SECONDS = 5.0
"""A send whose attempt was written with an earlier send's (a group) more than this long ago
first proves this try still owns the ledger (:meth:`CampaignLedger.confirm_owner`): a try paused
meanwhile (a stopped pod, a partition) while another took over stops there, before that send."""
HOOK_LOGGER = "famulor_provider.hooks.famulor"
# The API's error codes that refuse one recipient for good: a retry sends the same number to the
# same API and gets the same answer, so the recipient is recorded ``rejected`` and never sent again.
REJECTION_CODES = frozenset(
    {
        "INVALID_PHONE",  # the number is not a valid phone number
        "TWILIO_ERROR_21211",  # invalid 'To' phone number
        "TWILIO_ERROR_21614",  # 'To' is not a valid mobile number
        "TWILIO_ERROR_21610",  # the recipient opted out (STOP) of this sender
        "TWILIO_ERROR_63024",  # not a valid WhatsApp user (no WhatsApp on that number)
    }
)
# Errors that concern every recipient: sending on would only repeat them.
STOPPING_ERRORS = (FamulorInsufficientBalanceError, FamulorAuthError, FamulorTemplateError)


class PerSendLinesAtDebug(logging.Filter):
    """Show the hook's INFO lines from the campaign's send threads at DEBUG only.

    The hook logs each send (two lines, with the recipient); in a campaign of 100,000 that is
    200,000 lines of personal data. The campaign logs counts instead, and a line per refusal.

    :param logger: the hook's logger, to tell whether DEBUG is on.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not threading.current_thread().name.startswith(THREAD_PREFIX):
            return True
        if not self.logger.isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


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
        # How long recording an attempt takes (smoothed): the window's wait ends that much earlier,
        # so a slow ledger write (an S3 request) overlaps the wait instead of adding to it.
        self.attempt_seconds = 0.0
        self.reserved: deque[Mapping[str, Any]] = deque()  # attempts written, sends not yet made
        self.group_written_at = 0.0  # when the attempts in reserved were written
        self.workers = max(2, min(POOL_SIZE, round(settings.max_sends_per_second)))
        self.hold_until = 0.0  # no send before this time (429 holds)
        self.phone_for_log: Callable[[Any], str] = mask_phone
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
        # Read once per run, not once per line.
        self.phone_for_log = str if full_phone_numbers_in_logs() else mask_phone
        in_flight: dict[Future[Any], tuple[Mapping[str, Any], int, list[float | None]]] = {}
        again: deque[Mapping[str, Any]] = deque()
        source = iter(recipients)
        hook_log = logging.getLogger(HOOK_LOGGER)
        hook_filter = PerSendLinesAtDebug(hook_log)
        hook_log.addFilter(hook_filter)
        try:
            self._loop(in_flight, again, source)
        finally:
            hook_log.removeFilter(hook_filter)
        self.ledger.flush()  # the outcomes a store holds back for its next write
        self._progress(final=True)

    def _loop(
        self,
        in_flight: dict[Future[Any], tuple[Mapping[str, Any], int, list[float | None]]],
        again: deque[Mapping[str, Any]],
        source: Iterator[Mapping[str, Any]],
    ) -> None:
        with ThreadPoolExecutor(self.workers, thread_name_prefix=THREAD_PREFIX) as pool:
            try:
                while True:
                    # Its attempt was written with an earlier send's: it stays reserved until sent.
                    recorded = bool(self.reserved)
                    recipient: Mapping[str, Any] | None
                    if recorded:
                        recipient = self.reserved[0]
                    else:
                        recipient = again.popleft() if again else next(source, None)
                    if recipient is None:
                        if not in_flight:
                            break
                        self._collect(in_flight, again, block=True)
                        continue
                    phone = recipient["recipient_phone"]
                    if not recorded and not self.ledger.should_send(phone, self.settings.resend_unknown):
                        self.skipped[self.ledger.state.get(phone) or SENT] += 1
                        continue
                    while len(in_flight) >= self.workers:
                        self._collect(in_flight, again, block=True)
                    self._wait_for_window(ahead=0.0 if recorded else self.attempt_seconds)
                    self._wait_for_hold()
                    self.pacer.wait("campaign", self.sleep)
                    # Answers that came while waiting may stop, pause or hold the campaign (402,
                    # SENDER_OFFLINE, 429): learn them before this send, not after it.
                    before = (self.generation, self.rate_limited)
                    self._collect(in_flight, again, block=False)
                    if (self.generation, self.rate_limited) != before:
                        if not recorded:
                            again.appendleft(recipient)
                        continue
                    if recorded:
                        if self.clock() - self.group_written_at > LEASE_SECONDS:
                            self.ledger.confirm_owner()  # raises the conflict after a takeover
                            self.group_written_at = self.clock()
                        self.reserved.popleft()
                    else:
                        self._record_attempts(recipient, len(in_flight), again, source)
                    answered: list[float | None] = [None]
                    self.answered.append(answered)
                    future = pool.submit(self._send, recipient, answered)
                    in_flight[future] = (recipient, self.generation, answered)
                    self._collect(in_flight, again, block=False)
            except BaseException:
                # Stop sending, but record what the requests in flight did before leaving.
                for future in in_flight:
                    future.cancel()
                self._refuse_reserved()
                self._collect(in_flight, again, block=True, draining=True)
                raise

    def _record_attempts(
        self,
        recipient: Mapping[str, Any],
        in_flight: int,
        again: deque[Mapping[str, Any]],
        source: Iterator[Mapping[str, Any]],
    ) -> None:
        """Write the attempt of ``recipient``, durable before its POST, with those of the sends due
        while the write takes (a slow store at a high pace): one write for the group, never more
        sends ahead than the in-flight window allows. The others wait in :attr:`reserved`."""
        size = min(math.ceil(1.25 * self.attempt_seconds / self.pacer.interval), self.workers - in_flight)
        group = [recipient]
        while len(group) < size:
            following = again.popleft() if again else next(source, None)
            if following is None:
                break
            phone = following["recipient_phone"]
            if self.ledger.should_send(phone, self.settings.resend_unknown):
                group.append(following)
            else:
                self.skipped[self.ledger.state.get(phone) or SENT] += 1
        written = self.clock()
        self.ledger.record_attempts([r["recipient_phone"] for r in group])
        self.attempt_seconds += 0.3 * (self.clock() - written - self.attempt_seconds)
        self.reserved.extend(group[1:])
        self.group_written_at = self.clock()
        self._wait_for_window()  # in case the write was quicker than that

    def _refuse_reserved(self) -> None:
        """Record the grouped attempts that were never sent as refused (nothing was sent)."""
        while self.reserved:
            phone = self.reserved.popleft()["recipient_phone"]
            with contextlib.suppress(FamulorError):  # e.g. fenced out: they stay unknown, never sent
                self._outcome(phone, REFUSED, error="the campaign stopped before this send")

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

    def _wait_for_window(self, ahead: float = 0.0) -> None:
        """Keep any window of the API's limit free of more than ``window_sends`` sends.

        The API counted each send at some time before its answer, so one window after the answer
        to the send ``window_sends`` back is safe. A send still unanswered (a slow answer) does not
        hold the campaign: the pacer's spacing is all that applies then.

        :param ahead: end the wait this many seconds early (the time the ledger write takes).
        """
        if len(self.answered) < self.window_sends:
            return
        answered = self.answered[0][0]
        if answered is not None:
            delay = answered + self.window - ahead - self.clock()
            if delay > 0:
                self.sleep(delay)

    def _wait_for_hold(self) -> None:
        """Send nothing before the latest end of the 429 holds."""
        delay = self.hold_until - self.clock()
        if delay > 0:
            self.sleep(delay)
            # Start the schedule anew at the hold's end: no catch-up burst for the slots it took.
            self.pacer = SendPacer(self.pacer.interval, clock=self.clock, catch_up=self.pacer.catch_up)

    def _hold(self, error: FamulorRateLimitError, arrived: float | None) -> None:
        """Hold every send until ``Retry-After`` (capped) after this 429 arrived; holds overlap."""
        seconds = min(MAX_HOLD, error.retry_after if error.retry_after is not None else DEFAULT_HOLD)
        end = (self.clock() if arrived is None else arrived) + seconds
        if end > self.hold_until:
            self.hold_until = end
            log.warning("The API answered 429; holding sends for %.1f s", end - self.clock())

    def _collect(
        self,
        in_flight: dict[Future[Any], tuple[Mapping[str, Any], int, list[float | None]]],
        again: deque[Mapping[str, Any]],
        *,
        block: bool,
        draining: bool = False,
    ) -> None:
        """Record finished sends (at least one when ``block``; all when ``draining``)."""
        while in_flight:
            done, _ = wait(list(in_flight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in done:
                recipient, generation, answered = in_flight.pop(future)
                self._record(future, recipient, generation, again, draining, answered[0])
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
        answered_at: float | None = None,
    ) -> None:
        phone = recipient["recipient_phone"]
        if future.cancelled():  # never started: nothing was sent
            self._outcome(phone, REFUSED, error="the campaign stopped before this send")
            return
        error = future.exception()
        if error is None:
            message = future.result()
            self.connect_failures = 0
            # The ledger's message_id is the whatsapp_message_id: the id delivery receipts name.
            self._outcome(phone, SENT, message_id=message.whatsapp_message_id, status=message.status)
            return
        if isinstance(error, FamulorDeliveryUnknownError):
            self._outcome(phone, UNKNOWN, error_code=error.error_code, error=error)
            return
        if not isinstance(error, FamulorError) or (
            isinstance(error, FamulorConnectionError) and error.request_sent
        ):
            self._outcome(phone, UNKNOWN, error=f"{type(error).__name__}: {error}")
            return
        # Everything below was refused: nothing was sent.
        code = getattr(error, "error_code", None)
        if code in REJECTION_CODES:  # for good: never sent again, the campaign goes on
            log.warning(
                "Recipient %s rejected for good by the API (%s); not sending it again",
                self.phone_for_log(phone),
                code,
            )
            self._outcome(phone, REJECTED, error_code=code, error=error)
            return
        # Not sent this time: a later try (or this one, for 429, offline, no connection) sends it.
        retry = not draining and isinstance(
            error, FamulorRateLimitError | FamulorSenderOfflineError | FamulorConnectionError
        )
        self._outcome(phone, REFUSED, final=not retry, error_code=code, error=error)
        if draining:
            return
        if isinstance(error, FamulorRateLimitError):
            self.rate_limited += 1
            self._hold(error, answered_at)
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
            "%d refused, %d rejected, %d answered 429; settled by earlier tries: %s",
            "done" if final else "progress",
            done,
            self.total,
            100.0 * done / self.total if self.total else 100.0,
            rate,
            eta,
            self.outcomes[SENT],
            self.outcomes[UNKNOWN],
            self.outcomes[REFUSED],
            self.outcomes[REJECTED],
            self.rate_limited,
            dict(self.skipped) or "none",
        )


def rejection_limit(max_rejected: Any) -> float | None:
    """``max_rejected`` checked: a count (a whole number from 0), a fraction of the recipients
    (``0 < f < 1``, returned below 1), or ``None`` (blank: no limit). Rendered text is fine.

    :param max_rejected: the operator's argument.
    """
    from famulor_provider.validation import is_blank

    if is_blank(max_rejected):
        return None
    fix = "give a count of recipients (e.g. 100) or a fraction below 1 (e.g. 0.01 for 1 %)"
    if isinstance(max_rejected, bool):
        raise FamulorValidationError("max_rejected", f"{fix}, got {max_rejected!r}")
    try:
        number = float(max_rejected)
    except (TypeError, ValueError):
        raise FamulorValidationError("max_rejected", f"{fix}, got {max_rejected!r}") from None
    if not number >= 0 or number == float("inf") or (number >= 1 and not number.is_integer()):
        raise FamulorValidationError("max_rejected", f"{fix}, got {max_rejected!r}")
    return number


def rejections_exceeded(rejected: int, limit: float | None, recipients: int) -> bool:
    """Whether ``rejected`` recipients are more than ``limit`` allows (see :func:`rejection_limit`).

    :param rejected: how many recipients the ledger holds as rejected.
    :param limit: the checked ``max_rejected``.
    :param recipients: the campaign's unique valid recipients.
    """
    if limit is None:
        return False
    allowed = limit * recipients if 0 < limit < 1 else limit
    return rejected > allowed
