"""The polling budget: how many requests per minute pollers may spend on one connection.

The account allows 100 requests per minute for everything. Pollers (the reply trigger, the
inbound-message trigger) share, per connection and process, at most the connection's
``poll_requests_per_minute`` (default 50, half of the account's limit), so sends keep the rest.
Each request takes a slot ``60 / rate`` seconds after the previous one (the send pacer's
schedule, so a long walk never bursts into the API's 20-per-10-s limit), and a poller learns how
far its interval must stretch when one poll costs more than the interval allows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING

from famulor_provider.get_provider_info import DEFAULT_POLL_REQUESTS_PER_MINUTE
from famulor_provider.pacing import SendPacer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

BURST_SECONDS = 6.0  # a late poller may use the slots of the last 6 s at once (5 at 50/min)


class PollingBudget:
    """
    Per-connection request budget shared by every poller of the process.

    Safe from threads and event loops alike: taking a slot is a short locked computation, and the
    caller sleeps (``time.sleep`` or ``asyncio.sleep``) outside the lock.

    :param clock: a monotonic clock (injectable for tests).
    :param burst_seconds: how many seconds of missed slots a poller that comes late may use at once.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, burst_seconds: float = BURST_SECONDS
    ) -> None:
        self.clock = clock
        self._pacer = SendPacer(60.0 / DEFAULT_POLL_REQUESTS_PER_MINUTE, clock=clock, catch_up=burst_seconds)
        self._lock = threading.Lock()
        self._stretched: dict[str, float] = {}

    def reserve(self, key: str, requests_per_minute: float = DEFAULT_POLL_REQUESTS_PER_MINUTE) -> float:
        """Take the slot of one request; return the seconds to wait before sending it.

        :param key: the connection id.
        :param requests_per_minute: the connection's ``poll_requests_per_minute``.
        """
        return self._pacer.reserve(key, 60.0 / requests_per_minute)

    async def acquire(
        self,
        key: str,
        requests_per_minute: float = DEFAULT_POLL_REQUESTS_PER_MINUTE,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Wait (without blocking the event loop) until one request of ``key`` may be sent.

        :param key: the connection id.
        :param requests_per_minute: the connection's ``poll_requests_per_minute``.
        :param sleep: the async sleeper.
        """
        delay = self.reserve(key, requests_per_minute)
        if delay > 0:
            await sleep(delay)

    def interval(
        self,
        key: str,
        requests: int,
        interval: float,
        requests_per_minute: float = DEFAULT_POLL_REQUESTS_PER_MINUTE,
    ) -> float:
        """The seconds between two polls of ``requests`` requests each that keep within the budget.

        That is ``interval``, or longer when ``requests`` per ``interval`` would spend more than
        ``requests_per_minute``; a stretch is logged (at INFO, once per new length).

        :param key: the connection id.
        :param requests: what one poll costs.
        :param interval: the poller's own interval in seconds.
        :param requests_per_minute: the connection's ``poll_requests_per_minute``.
        """
        needed = requests * 60.0 / requests_per_minute
        with self._lock:
            previous = self._stretched.get(key)
            if needed <= interval:
                self._stretched.pop(key, None)
                if previous is not None:
                    log.info("Polling of connection %r is back to its %g s interval", key, interval)
                return interval
            self._stretched[key] = needed
        if previous is None or abs(previous - needed) >= 1.0:
            log.info(
                "A poll of connection %r costs %d requests: stretching the interval from %g s to %g s "
                "to stay within %g requests per minute (connection extra poll_requests_per_minute)",
                key,
                requests,
                interval,
                needed,
                requests_per_minute,
            )
        return needed


# Shared by every poller (trigger, sensor) of the process.
POLLING_BUDGET = PollingBudget()
