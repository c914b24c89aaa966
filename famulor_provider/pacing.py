"""The send pacer: at most the API's documented send rate per connection, across threads."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

SEND_RATE_PER_SECOND = 5.0  # the API's documented limit for sends, per account
SLACK = 1.02  # 2 % slack for network jitter: a 429 costs far more than the gap


def send_interval(sends_per_second: float = SEND_RATE_PER_SECOND) -> float:
    """The gap between two sends that keeps under ``sends_per_second``, with slack.

    :param sends_per_second: the account's send limit.
    """
    return SLACK / sends_per_second


SEND_INTERVAL = send_interval()


class SendPacer:
    """
    Spaces sends at least ``interval`` seconds apart per key (connection id), across threads.

    Each caller reserves the next free slot under a lock, then sleeps outside it, so waiting
    callers never block one another's bookkeeping.

    :param interval: the minimum gap between two sends with the same key, in seconds.
    :param clock: a monotonic clock (injectable for tests).
    :param catch_up: how far (seconds) a caller that came late may use the slot it missed, so
        small delays do not add up over a long run (0: a late caller starts the schedule anew).
    """

    def __init__(
        self, interval: float, clock: Callable[[], float] = time.monotonic, catch_up: float = 0.0
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.catch_up = catch_up
        self._lock = threading.Lock()
        self._next_slot: dict[str, float] = {}

    def reserve(self, key: str, interval: float | None = None) -> float:
        """Take the next send slot of ``key``; return the seconds until it comes.

        :param key: what the limit is shared by (the connection id).
        :param interval: the gap after this slot (default: the pacer's).
        """
        with self._lock:
            now = self.clock()
            slot = max(now - self.catch_up, self._next_slot.get(key, now))
            self._next_slot[key] = slot + (self.interval if interval is None else interval)
        return max(0.0, slot - now)

    def wait(
        self, key: str, sleep: Callable[[float], Any] = time.sleep, interval: float | None = None
    ) -> None:
        """Take the next send slot of ``key``; sleep until it comes.

        :param key: what the limit is shared by (the connection id).
        :param sleep: the sleeper.
        :param interval: the gap after this slot (default: the pacer's).
        """
        delay = self.reserve(key, interval)
        if delay > 0:
            sleep(delay)


# Shared by every hook, task and thread of the process.
SEND_PACER = SendPacer(SEND_INTERVAL)
