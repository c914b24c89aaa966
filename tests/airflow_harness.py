"""Run real DAGs with ``dag.test()`` inside pytest, on Airflow 2.11, 3.1 and 3.x.

``conftest.py`` points Airflow at a temporary home before this module (and so Airflow) is
imported. Tests call :func:`run_dag` (or the ``run_dag`` fixture) and assert on the returned
:class:`DagRunResult`.

The DAG runs in this process: ``dag.test()`` with the real task runner (Airflow 3: the Task SDK's
in-process supervisor and execution API; Airflow 2.11: ``TaskInstance._run_raw_task``). A
subprocess ``airflow dags test`` costs a full Airflow start-up per run and a second round trip to
read XComs back: measured on the harness DAG, 2.7 s (2.11), 13 s (3.1) and 10 s (3.3) per run
against 0.4-0.8 s in process (after a one-time 2-5 s on 3.x to build the execution API app).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import os
import signal
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from airflow import settings
from airflow.configuration import conf
from airflow.triggers.base import BaseTrigger, TriggerEvent
from airflow.utils import db
from airflow.utils.session import create_session

try:
    from airflow.dag_processing.dagbag import DagBag  # Airflow >= 3.2
except ImportError:
    from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
try:
    from airflow.models.xcom import XComModel as XCom  # Airflow 3
except ImportError:
    from airflow.models.xcom import XCom  # type: ignore[no-redef]

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DAGS = REPO_ROOT / "example_dags"


def airflow_version() -> str:
    return importlib.metadata.version("apache-airflow")


def migrate_db(cache: Path) -> None:
    """
    Migrate the configured SQLite DB in place, then keep a copy at ``cache`` for later sessions.

    :param cache: where to store the migrated DB
    """
    kwargs: dict[str, Any] = {}
    if "reserialize_dags" in inspect.signature(db.upgradedb).parameters:
        kwargs["reserialize_dags"] = False  # 2.11 and 3.1 would parse the dags folder here
    # Alembic configures logging while it migrates (fileConfig disables the loggers that exist
    # and sets the root level): put them back, or the first session on a new machine would
    # drop the INFO lines that tests read.
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    disabled = {lg.name: lg.disabled for lg in loggers}
    root_level = logging.getLogger().level
    db.upgradedb(**kwargs)
    for name, was_disabled in disabled.items():
        logging.getLogger(name).disabled = was_disabled
    logging.getLogger().setLevel(root_level)

    source = conf.get("database", "sql_alchemy_conn").removeprefix("sqlite:///")
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.name}.{uuid.uuid4().hex}.tmp")
    # The backup API copies a consistent snapshot even while Airflow holds connections.
    with sqlite3.connect(source) as src, sqlite3.connect(partial) as dst:
        src.backup(dst)
    partial.replace(cache)


@dataclass(frozen=True)
class TaskInstanceResult:
    """
    One task instance of a finished run.

    :param task_id: the task's id
    :param map_index: ``-1`` for unmapped tasks, else the index in the expansion
    :param state: the final state as a plain string (``"success"``, ``"failed"``, ...)
    :param try_number: the try the run ended on (1 on the first try)
    :param xcom: every XCom the task instance pushed, by key (``"return_value"`` included)
    """

    task_id: str
    map_index: int
    state: str | None
    try_number: int
    xcom: dict[str, Any] = field(default_factory=dict)

    @property
    def return_value(self) -> Any:
        return self.xcom.get("return_value")


@dataclass(frozen=True)
class DagRunResult:
    """
    What ``dag.test()`` left in the metadata DB for one run.

    :param dag_id: the DAG's id
    :param run_id: the run's id
    :param state: the run's final state as a plain string
    :param task_instances: all task instances, ordered by task id then map index
    """

    dag_id: str
    run_id: str
    state: str
    task_instances: list[TaskInstanceResult]

    def ti(self, task_id: str, map_index: int = -1) -> TaskInstanceResult:
        """Return one task instance; ``KeyError`` lists what ran if it is missing."""
        for ti in self.task_instances:
            if ti.task_id == task_id and ti.map_index == map_index:
                return ti
        ran = [(ti.task_id, ti.map_index) for ti in self.task_instances]
        raise KeyError(f"no task instance {task_id!r} map_index={map_index} in {ran}")

    def mapped(self, task_id: str) -> list[TaskInstanceResult]:
        """Return the expanded task instances of a mapped task, by map index."""
        return [ti for ti in self.task_instances if ti.task_id == task_id and ti.map_index >= 0]

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        return self.ti(task_id, map_index).xcom.get(key)

    @property
    def states(self) -> dict[str, str | None]:
        """``{"task_id": state}``, with ``"task_id[i]"`` for mapped task instances."""
        return {
            ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": ti.state
            for ti in self.task_instances
        }


def run_dag(
    dag_file: Path | str,
    dag_id: str,
    *,
    conf: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> DagRunResult:
    """
    Run one DAG from its file with ``dag.test()`` and collect states and XComs.

    The DAG file's directory is the dags folder for the run (Airflow 3 serializes the DAG from
    there). Failing tasks do not raise: assert on the states.

    :param dag_file: the Python file that defines the DAG
    :param dag_id: the DAG to run from that file
    :param conf: the run's ``dag_run.conf``
    :param env: extra environment variables (e.g. ``AIRFLOW_CONN_*``) for the run only
    :param timeout: seconds before :class:`DagRunTimeout` ends a run that hangs (``dag.test()``
        never gives up by itself, e.g. on 2.11 when a trigger raises); 0 for no limit
    """
    dag_file = Path(dag_file).resolve()
    dag = _load_dag(dag_file, dag_id)
    with (
        _dags_folder(dag_file.parent),
        mock.patch.dict(os.environ, dict(env or {})),
        _deadline(timeout, dag_id),
    ):
        dag_run = dag.test(run_conf=conf)
    return _collect(dag_run)


class DagRunTimeout(BaseException):
    """
    A ``run_dag`` call ran out of time.

    A ``BaseException``: ``dag.test()`` logs and swallows ``Exception`` from a task and loops on.
    """


@contextmanager
def _deadline(seconds: float, dag_id: str) -> Iterator[None]:
    # A watchdog thread and SIGUSR1, not SIGALRM: Airflow's own timeouts (DAG parsing in 3.x
    # dag.test, execution_timeout) take SIGALRM over and clear its timer.
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise DagRunTimeout(f"dag.test() of {dag_id!r} still running after {seconds:g} s")

    done = threading.Event()

    def watch() -> None:
        if done.wait(seconds):
            return
        while True:  # again every 5 s, in case something catches BaseException
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
            if done.wait(5):
                return

    previous = signal.signal(signal.SIGUSR1, expire)
    watchdog = threading.Thread(target=watch, name=f"run_dag-deadline-{dag_id}", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()
        signal.signal(signal.SIGUSR1, previous)


def _load_dag(dag_file: Path, dag_id: str) -> Any:
    bag = DagBag(dag_folder=str(dag_file), safe_mode=False)
    if bag.import_errors:
        raise RuntimeError(f"cannot import {dag_file}: {bag.import_errors}")
    if dag_id not in bag.dags:
        raise KeyError(f"{dag_file} defines {sorted(bag.dags)}, not {dag_id!r}")
    return bag.dags[dag_id]


@contextmanager
def _dags_folder(folder: Path) -> Iterator[None]:
    with (
        mock.patch.object(settings, "DAGS_FOLDER", str(folder)),
        mock.patch.dict(os.environ, {"AIRFLOW__CORE__DAGS_FOLDER": str(folder)}),
    ):
        yield


def _collect(dag_run: DagRun) -> DagRunResult:
    with create_session() as session:
        tis = sorted(dag_run.get_task_instances(session=session), key=lambda ti: (ti.task_id, ti.map_index))
        xcoms = _xcoms(dag_run.dag_id, dag_run.run_id, session)
        return DagRunResult(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            state=str(_plain(dag_run.get_state())),
            task_instances=[
                TaskInstanceResult(
                    task_id=ti.task_id,
                    map_index=ti.map_index,
                    state=_plain(ti.state),
                    try_number=ti.try_number,
                    xcom=xcoms.get((ti.task_id, ti.map_index), {}),
                )
                for ti in tis
            ],
        )


def _xcoms(dag_id: str, run_id: str, session: Any) -> dict[tuple[str, int], dict[str, Any]]:
    # Plain rows: on 2.11 loading ORM objects pre-decodes `value` in a reconstructor.
    rows = (
        session.query(XCom.task_id, XCom.map_index, XCom.key, XCom.value)
        .filter(XCom.dag_id == dag_id, XCom.run_id == run_id)
        .all()
    )
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        found.setdefault((row.task_id, row.map_index), {})[row.key] = XCom.deserialize_value(row)
    return found


def _plain(state: Any) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


@functools.cache
def speed_up_in_process_runs() -> None:
    """
    Reuse one in-process execution API app for every task (Airflow 3.1 builds one per task).

    3.3 caches it the same way (``functools.lru_cache`` on ``in_process_api_server``); on 3.1 the
    rebuild costs about 1.5 s per task instance.
    """
    if airflow_version().startswith("2."):
        return
    from airflow.sdk.execution_time import supervisor

    if not hasattr(supervisor.in_process_api_server, "cache_info"):
        supervisor.in_process_api_server = functools.lru_cache(maxsize=1)(supervisor.in_process_api_server)


class EchoTrigger(BaseTrigger):
    """
    Fire one event carrying ``payload`` at once: lets a harness DAG defer without a service.

    :param payload: the event's payload
    """

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__()
        self.payload = payload

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {"payload": self.payload}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(self.payload)
