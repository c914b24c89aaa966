"""Asset events written in batches: the webhooks that arrive together share one transaction.

A request thread hands its event to ``EventRecorder.record`` and waits until the transaction that
holds it is committed (or failed): the receiver still answers 2xx only for committed events, while
under load one commit (SQLite's fsync, a round trip to PostgreSQL) serves many receipts.

Each event goes through Airflow's own ``AssetManager.register_asset_change`` (what
``POST /api/v2/assets/events`` calls), which also queues the DAG runs it triggers. An asset no DAG
declared yet is created, active, on its first event.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

MAX_BATCH = 100
"""Events per transaction at most."""
WAIT_SECONDS = 20.0
"""How long a request waits for its transaction; then ``TimeoutError`` (the event may still commit)."""


@dataclass
class _Pending:
    name: str
    extra: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class EventRecorder:
    """One writer thread per process; ``record`` blocks until the event's batch is committed.

    :param max_batch: events per transaction at most.
    :param wait_seconds: how long ``record`` waits.
    """

    def __init__(self, max_batch: int = MAX_BATCH, wait_seconds: float = WAIT_SECONDS) -> None:
        self.max_batch = max_batch
        self.wait_seconds = wait_seconds
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._thread: threading.Thread | None = None

    def record(self, name: str, extra: dict[str, Any]) -> None:
        """Record one event of asset ``name``; return once it is committed.

        Raises what the transaction raised (``sqlalchemy.exc.SQLAlchemyError`` when the database
        failed), or ``TimeoutError`` after ``wait_seconds``.

        :param name: the asset's name (and URI).
        :param extra: the event's ``extra``.
        """
        pending = _Pending(name, extra)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="famulor-webhook-events", daemon=True)
                self._thread.start()
            self._queue.append(pending)
            self._cond.notify()
        if not pending.done.wait(self.wait_seconds):
            raise TimeoutError(f"the event was not committed within {self.wait_seconds:g} s")
        if pending.error is not None:
            raise pending.error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            error: BaseException | None = None
            try:
                write(batch)
            except Exception as exc:  # handed to every waiting request; the thread goes on
                error = exc
            for pending in batch:
                pending.error = error
                pending.done.set()


def write(batch: list[_Pending]) -> None:
    """Write the batch in one transaction; retried once when another process created an asset meanwhile."""
    from airflow.utils.session import create_session
    from sqlalchemy.exc import IntegrityError

    for attempt in (1, 2):
        try:
            with create_session(scoped=False) as session:
                _register(batch, session)
            return
        except IntegrityError:
            if attempt == 2:
                raise


def _register(batch: list[_Pending], session: Session) -> None:
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetActive, AssetModel
    from sqlalchemy import select

    assets: dict[str, AssetModel] = {}
    for pending in batch:
        asset = assets.get(pending.name)
        if asset is None:
            asset = session.scalar(
                select(AssetModel).where(AssetModel.name == pending.name, AssetModel.uri == pending.name)
            )
            if asset is None:
                asset = AssetModel(name=pending.name, uri=pending.name, group="asset", extra={})
                session.add(asset)
                session.flush()
                session.add(AssetActive.for_asset(asset))
                session.flush()
                log.info("Created asset %s for Famulor's webhooks (no DAG declared it yet)", pending.name)
            assets[pending.name] = asset
        if asset_manager.register_asset_change(asset=asset, extra=pending.extra, session=session) is None:
            raise RuntimeError(f"Airflow did not record an event for asset {pending.name}")
