"""Triggers for Famulor's WhatsApp API.

Importing this module must stay cheap (the triggerer and the DAG processor import it): the
hook, ``httpx`` and ``tenacity`` are imported inside the methods that use them.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from famulor_provider.exceptions import FamulorError, FamulorTimeoutError, error_event
from famulor_provider.get_provider_info import DEFAULT_TIMEOUT
from famulor_provider.models import SenderCriteria, WhatsAppSender, matching_senders

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

DEFAULT_POLL_INTERVAL = 300.0  # Famulor syncs sender status with Meta every 5 minutes
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
        """Whether a caller may join it (in flight, not stalled) or reuse its result (young enough)."""
        if not self.task.done():
            return now < self.deadline
        return not self.task.cancelled() and now - self.started_at < max_age


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

    A caller joins the request in flight, or reuses the last result (or error) while it is
    younger than ``max_age``; otherwise it starts a new request. Callers with the shortest poll
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


class WhatsAppSenderTrigger(BaseTrigger):
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
        super().__init__()
        self.famulor_conn_id = famulor_conn_id
        if criteria is None:
            criteria = SenderCriteria()
        self.criteria = (
            criteria if isinstance(criteria, SenderCriteria) else SenderCriteria.from_dict(criteria)
        )
        self.min_count = int(min_count)
        self.poll_interval = max(float(poll_interval), MIN_POLL_INTERVAL)
        if isinstance(end_time, str):
            end_time = datetime.fromisoformat(end_time).timestamp()
        self.end_time = None if end_time is None else float(end_time)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and JSON primitives only: never the API key (the triggerer loads the connection)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "famulor_conn_id": self.famulor_conn_id,
                "criteria": self.criteria.to_dict(),
                "min_count": self.min_count,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
            },
        )

    def _remaining(self) -> float | None:
        return None if self.end_time is None else self.end_time - time.time()

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
