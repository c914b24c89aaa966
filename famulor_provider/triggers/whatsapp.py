"""Triggers for Famulor's WhatsApp API.

Importing this module must stay cheap (the triggerer and the DAG processor import it): the
hook, ``httpx`` and ``tenacity`` are imported inside the methods that use them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from famulor_provider import exceptions
from famulor_provider.exceptions import FamulorError, FamulorSenderNotFoundError
from famulor_provider.models import SenderCriteria, WhatsAppSender, normalize_phone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

DEFAULT_POLL_INTERVAL = 300.0  # Famulor syncs sender status with Meta every 5 minutes
MIN_POLL_INTERVAL = 0.1  # a floor, so that a poll interval of 0 cannot become a hot loop
ERROR_FIELDS = ("status_code", "error_code", "field")


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


def error_event(error: BaseException) -> dict[str, Any]:
    """The terminal event payload of a failed trigger: the typed error's name, message and fields."""
    payload: dict[str, Any] = {"status": "error", "error_type": type(error).__name__, "message": str(error)}
    if isinstance(error, FamulorError):
        # Instance attributes only: AirflowException has a class-level ``status_code`` default.
        payload.update({name: error.__dict__[name] for name in ERROR_FIELDS if name in error.__dict__})
    return payload


def error_from_event(event: Mapping[str, Any]) -> FamulorError:
    """Rebuild the typed error of an :func:`error_event` payload, for ``execute_complete`` to raise."""
    error_type = str(event.get("error_type") or "FamulorError")
    message = str(event.get("message") or "the trigger failed without a message")
    cls = getattr(exceptions, error_type, None)
    if not (isinstance(cls, type) and issubclass(cls, FamulorError)):
        return FamulorError(f"{error_type}: {message}")
    # The error classes take different constructor arguments; the message is already complete,
    # so build the instance without __init__ and restore its fields.
    error = cls.__new__(cls, message)
    for name in ERROR_FIELDS:
        if name in event:
            setattr(error, name, event[name])
    return error


# ---------------------------------------------------------------------------------------------
# Coalescing: triggers in one triggerer that poll the same connection share one request.


@dataclass
class _SharedListing:
    """One listing of a connection's senders, in flight or done, shared by every trigger polling it."""

    task: asyncio.Task[list[WhatsAppSender]]
    started_at: float  # loop.time() when the request started


# Keyed by event loop (the triggerer runs one; tests make new ones), connection and status query.
_listings: dict[tuple[asyncio.AbstractEventLoop, str, str], _SharedListing] = {}


async def _list_senders(famulor_conn_id: str, status: str) -> list[WhatsAppSender]:
    from famulor_provider.hooks.famulor import FamulorHook

    return await FamulorHook(famulor_conn_id).alist_whatsapp_senders(status=status)


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
    if listing is None or (
        listing.task.done() and (listing.task.cancelled() or loop.time() - listing.started_at >= max_age)
    ):
        for stale in [k for k in _listings if k[0].is_closed()]:
            del _listings[stale]
        task = loop.create_task(_list_senders(famulor_conn_id, status))
        task.add_done_callback(_retrieve_exception)
        listing = _listings[key] = _SharedListing(task, loop.time())
    return await asyncio.shield(listing.task)


# ---------------------------------------------------------------------------------------------


class WhatsAppSenderTrigger(BaseTrigger):
    """
    Wait until at least ``min_count`` WhatsApp senders match ``criteria``.

    Polls ``GET /user/whatsapp/senders?status=all`` through the async hook, sharing each
    request with the other triggers of the same connection in this triggerer. Yields exactly
    one event: ``{"status": "success", "senders": [...]}``, ``{"status": "error", "error_type",
    "message", ...}`` for an error that waiting cannot fix (auth, unknown sender), or
    ``{"status": "timeout", "message", "senders"}`` at ``end_time``. Transient faults (429,
    5xx, timeouts, after the hook's retries) are logged and polling goes on.

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
        from famulor_provider.hooks.famulor import is_retryable_read

        matching: list[WhatsAppSender] = []
        while True:
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
            await asyncio.sleep(
                self.poll_interval if remaining is None else max(0.0, min(self.poll_interval, remaining))
            )
