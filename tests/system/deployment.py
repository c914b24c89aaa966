"""
A real Airflow deployment for system tests: every component a child process of the test.

``AirflowDeployment`` runs the components on 127.0.0.1 in a temporary ``AIRFLOW_HOME`` with a
SQLite DB, each in its own process group, and stops them by their ids:

- ``executor="local"``: Airflow 3: api-server, scheduler with the LocalExecutor, dag-processor,
  triggerer; Airflow 2.11: scheduler with the SequentialExecutor, triggerer.
- ``executor="celery"`` (Airflow 3 only): Debian's ``redis-server`` on a free port as broker and
  result backend, the CeleryExecutor, and ``workers`` ``airflow celery worker`` processes
  (``worker1``, ``worker2``, ...: one task slot each), plus the Airflow 3 components above.
  Airflow 3 accepts SQLite with the CeleryExecutor (workers reach the DB only through the
  api-server's execution API); Airflow 2.11 refuses it ("cannot use SQLite with the
  CeleryExecutor"). Task heartbeats time out after ``HEARTBEAT_TIMEOUT`` seconds, so a task
  whose worker was killed is failed (and retried) by the scheduler within about 20 s.

Every process a test starts shares ``shared`` (``FAMULOR_SYSTEM_SHARED_DIR``), the stand-in for
shared storage; each worker also gets ``FAMULOR_SYSTEM_WORKER`` (its name) in its environment.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

AIRFLOW_VERSION = importlib.metadata.version("apache-airflow")
AIRFLOW_3 = int(AIRFLOW_VERSION.split(".")[0]) >= 3
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Seconds without a task heartbeat before the scheduler fails the task instance (Celery mode).
HEARTBEAT_TIMEOUT = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def celery_unavailable() -> str | None:
    """Why the Celery deployment cannot run on this line or machine, or ``None``."""
    if not AIRFLOW_3:
        return f"Celery deployment: Airflow {AIRFLOW_VERSION} refuses SQLite with the CeleryExecutor"
    try:
        importlib.metadata.version("apache-airflow-providers-celery")
    except importlib.metadata.PackageNotFoundError:
        return "apache-airflow-providers-celery is not installed (make test-system: latest line only)"
    if not Path(REDIS_SERVER).exists():
        return "redis-server is not installed (make test-system installs Debian's redis-server)"
    return None


# The marks every system test module carries.
SYSTEM_TEST = pytest.mark.skipif(
    os.environ.get("FAMULOR_SYSTEM_TEST") != "1", reason="system test: run with `make test-system`"
)
NEEDS_CELERY = pytest.mark.skipif(celery_unavailable() is not None, reason=str(celery_unavailable()))


@contextlib.contextmanager
def deployed(
    tmp_path: Path, dag_file: Path, env: dict[str, str], **options: Any
) -> Iterator[AirflowDeployment]:
    """A deployment in ``tmp_path/airflow`` with ``dag_file`` in its dags folder, up for the block.

    :param tmp_path: the test's temporary folder.
    :param dag_file: the one DAG file to deploy.
    :param env: more environment variables (connections, ...).
    :param options: ``AirflowDeployment`` keywords (``executor``, ``workers``, ``triggerer``).
    """
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    shutil.copy(dag_file, home / "dags")
    airflow = AirflowDeployment(home, env, **options)
    try:
        airflow.up()
        yield airflow
    finally:
        airflow.stop()


class AirflowDeployment:
    """Airflow components as child processes of this test, sharing one temporary home.

    :param home: the ``AIRFLOW_HOME``.
    :param extra_env: more environment variables (connections, ...).
    :param executor: ``"local"`` (Local/SequentialExecutor) or ``"celery"``.
    :param workers: how many Celery workers (``executor="celery"`` only).
    :param triggerer: whether to start a triggerer (deferrable tasks need one; it costs CPU).
    :param api_server_only: Airflow 3: the api-server alone (no scheduler, dag-processor, triggerer).
    """

    def __init__(
        self,
        home: Path,
        extra_env: dict[str, str],
        *,
        executor: str = "local",
        workers: int = 2,
        triggerer: bool = True,
        api_server_only: bool = False,
    ) -> None:
        if executor not in ("local", "celery"):
            raise ValueError(f"unknown executor {executor!r}")
        self.home = home
        self.db = home / "airflow.db"
        self.shared = home / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        self.executor = executor
        self.triggerer = triggerer
        self.api_server_only = api_server_only
        self.worker_names = [f"worker{i}" for i in range(1, workers + 1)] if executor == "celery" else []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: set[str] = set()  # killed on purpose: not an early exit
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "PATH": f"{Path(AIRFLOW).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
                "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor" if AIRFLOW_3 else "SequentialExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                # Airflow 3.1's task supervisor notices a deferred task's exit only at its next
                # heartbeat; a trigger firing before that is mistaken for an external state change.
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
                "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "2",
                "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "2",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__WEBSERVER__SECRET_KEY": secrets.token_hex(16),
                "FAMULOR_SYSTEM_SHARED_DIR": str(self.shared),
            }
        )
        if executor == "celery":
            self.redis_port = free_port()
            redis = f"redis://127.0.0.1:{self.redis_port}"
            env.update(
                {
                    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                    "AIRFLOW__CELERY__BROKER_URL": f"{redis}/0",
                    "AIRFLOW__CELERY__RESULT_BACKEND": f"{redis}/1",
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
                    # One state-fetching process, not one per CPU.
                    "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
                    # A message is acknowledged when its task ends, and the broker hands an
                    # unacknowledged one to another worker only after the visibility timeout:
                    # far beyond a test, so a killed try comes back only as Airflow's retry.
                    "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
                    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
                    # A killed worker's task stops heartbeating: failed (and retried) by the
                    # scheduler after HEARTBEAT_TIMEOUT s, checked every 2 s (defaults 300 s, 10 s).
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                }
            )
        env.update(extra_env)
        self.env = env
        self.api_port = port

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run one ``airflow`` command to its end; its output."""
        done = subprocess.run(
            [AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None, program: str = AIRFLOW) -> None:
        """Start a long-running component in its own process group, logging to ``<home>/<name>.log``.

        :param name: the component's name in ``processes`` and its log file.
        :param args: its arguments (after ``airflow`` unless ``program`` says otherwise).
        :param env: more environment variables for this component only.
        :param program: the executable.
        """
        with (self.home / f"{name}.log").open("ab") as log:  # a restarted component appends
            self.processes[name] = subprocess.Popen(
                [program, *args],
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def up(self) -> None:
        """Migrate the DB and start every component of the chosen executor."""
        if self.executor == "celery":
            self.start_redis()
        self.cli("db", "migrate")
        if AIRFLOW_3:
            self.start_api_server()
            if self.api_server_only:
                return
            self.start("dag-processor", "dag-processor")
        # --skip-serve-logs: no log servers on every interface (fixed ports 8793/8794).
        self.start("scheduler", "scheduler", "--skip-serve-logs")
        if self.triggerer:
            self.start("triggerer", "triggerer", "--skip-serve-logs")
        for name in self.worker_names:
            self.start(
                name,
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@127.0.0.1",
                "--concurrency",
                "1",
                "--skip-serve-logs",
                "--pid",  # the default pid file in AIRFLOW_HOME would be shared by the workers
                str(self.home / f"{name}.pid"),
                "--without-gossip",
                "--without-mingle",
                env={"FAMULOR_SYSTEM_WORKER": name},
            )

    def start_api_server(self) -> None:
        """Start (or restart) the Airflow 3 api-server on ``api_port``."""
        self.stopped.discard("api-server")
        self.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port))

    def kill(self, name: str) -> None:
        """SIGKILL a component's process group (as a crash would) and reap it.

        :param name: the component (``api-server``, ``scheduler``...).
        """
        process = self.processes[name]
        self.stopped.add(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def api_answers(self) -> bool:
        """Whether the api-server answers (its health endpoint; the scheduler may not run)."""
        url = f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        except (OSError, ValueError):
            return False

    def start_redis(self) -> None:
        """Debian's redis-server on 127.0.0.1, in memory only, up once it answers PING."""
        self.start(
            "redis",
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            program=REDIS_SERVER,
        )

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        self.wait_until("redis-server to answer", answers, timeout=20)

    def api_healthy(self) -> bool:
        """Whether the Airflow 3 api-server answers and reports a healthy metadatabase and scheduler."""
        url = f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                health = json.load(response)
        except (OSError, ValueError):
            return False
        return all(health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler"))

    def wait_until_ready(self, timeout: float = 120) -> None:
        """Wait for the api-server (Airflow 3, execution API loaded) and every Celery worker."""
        if AIRFLOW_3:
            self.wait_until("the api-server to be healthy", self.api_healthy, timeout=timeout)
            # The execution API loads on its first request (about 20 s on a 2-CPU machine): longer
            # than a worker's request timeout, so a task would lose its first try to it.
            url = f"http://127.0.0.1:{self.api_port}/execution/health"
            with urllib.request.urlopen(url, timeout=timeout) as response:
                response.read()
        self.wait_until(
            "the Celery workers to be ready",
            lambda: all(b" ready." in (self.home / f"{name}.log").read_bytes() for name in self.worker_names),
            timeout=timeout,
        )

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a Celery worker as a machine failure would: its whole process tree at once.

        The worker's process group, plus the groups of its descendants: Airflow 3's task
        supervisor puts the task process in a process group of its own.

        :param name: the worker (``worker1``, ...).
        :return: the killed pids.
        """
        process = self.processes[name]
        try:
            tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        pids = [p.pid for p in tree]
        groups = {process.pid}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        self.stopped.add(name)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        process.wait(timeout=10)
        return pids

    def worker_of(self, pid: int) -> str | None:
        """The Celery worker whose process tree holds ``pid``, or ``None``."""
        try:
            ancestors = {p.pid for p in psutil.Process(pid).parents()}
        except psutil.NoSuchProcess:
            return None
        for name in self.worker_names:
            process = self.processes.get(name)
            if process and (process.pid == pid or process.pid in ancestors):
                return name
        return None

    def stop(self) -> None:
        """Stop every component this deployment started, by process group id.

        Then SIGKILL whatever is left of their trees (a task process leads its own group).
        """
        trees: dict[str, list[psutil.Process]] = {}
        for name, process in self.processes.items():
            try:
                trees[name] = psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                trees[name] = []
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for children in trees.values():
            for child in children:
                try:
                    if child.is_running():
                        child.kill()
                except psutil.NoSuchProcess:
                    pass

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError:  # locked, or a table not created yet
                return []

    def wait_until(self, what: str, condition: Callable[[], Any], timeout: float = 120) -> Any:
        """Poll ``condition`` until it is truthy; fail with the components' logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            for name, process in self.processes.items():
                if name not in self.stopped:
                    assert process.poll() is None, f"{name} exited early\n{self.logs()}"
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what}\n{self.logs()}")

    def log(self, name: str) -> str:
        """The whole log of a component."""
        return (self.home / f"{name}.log").read_text(errors="replace")

    def logs(self, lines: int = 40) -> str:
        parts = []
        for name in self.processes:
            text = (self.home / f"{name}.log").read_text(errors="replace").splitlines()
            parts.append(f"--- {name} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        self.wait_until(
            f"the DAG {dag_id} to be parsed",
            lambda: self.query("SELECT 1 FROM dag WHERE dag_id = ?", dag_id),
            timeout=timeout,
        )

    def trigger_until_deferred(self, dag_id: str, task_id: str, trigger_class: str) -> str:
        """Trigger ``dag_id`` once it is parsed, wait until ``task_id`` is deferred on one trigger of
        ``trigger_class`` (its name in ``famulor_provider.triggers.whatsapp``); its serialized kwargs."""
        self.wait_for_dag(dag_id)
        self.cli("dags", "trigger", dag_id)
        self.wait_until("the sensor to defer", lambda: self.task_state(dag_id, task_id) == "deferred")
        [(next_method,)] = self.query(
            "SELECT next_method FROM task_instance WHERE dag_id = ? AND task_id = ?", dag_id, task_id
        )
        assert next_method == "execute_complete"
        [(classpath, kwargs)] = self.query("SELECT classpath, kwargs FROM trigger")
        assert classpath == f"famulor_provider.triggers.whatsapp.{trigger_class}"
        return str(kwargs)

    def wait_for_polls(self, dag_id: str, task_id: str, requests: Callable[[], int], polls: int = 2) -> None:
        """Wait until ``requests()`` (the sandbox's count of the trigger's requests) grew by ``polls``:
        the triggerer polls while the task stays deferred, without a worker."""
        before = requests()
        self.wait_until("the triggerer to poll", lambda: requests() >= before + polls, timeout=60)
        assert self.task_state(dag_id, task_id) == "deferred"

    def wait_for_success(self, dag_id: str) -> dict[str, tuple[str, int]]:
        """Wait until the DAG's run finished; assert it succeeded; ``{task_id: (state, try_number)}``."""
        self.wait_until(
            "the DAG run to finish",
            lambda: self.query(
                "SELECT state FROM dag_run WHERE dag_id = ? AND state IN ('success', 'failed')", dag_id
            ),
        )
        assert self.query("SELECT state FROM dag_run WHERE dag_id = ?", dag_id) == [("success",)], self.logs()
        rows = self.query("SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ?", dag_id)
        return {task_id: (state, try_number) for task_id, state, try_number in rows}

    def return_value(self, dag_id: str, task_id: str) -> Any:
        """The task's XCom ``return_value``, decoded."""
        [(value,)] = self.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value'",
            dag_id,
            task_id,
        )
        return json.loads(value)

    def task_state(self, dag_id: str, task_id: str) -> str | None:
        rows = self.query("SELECT state FROM task_instance WHERE dag_id = ? AND task_id = ?", dag_id, task_id)
        return rows[0][0] if rows else None

    def task_instance(self, dag_id: str, task_id: str) -> dict[str, Any] | None:
        """The task instance's ``state``, ``try_number``, ``hostname`` and ``pid`` (first run of the DAG)."""
        rows = self.query(
            "SELECT state, try_number, hostname, pid FROM task_instance WHERE dag_id = ? AND task_id = ?",
            dag_id,
            task_id,
        )
        if not rows:
            return None
        state, try_number, hostname, pid = rows[0]
        return {"state": state, "try_number": try_number, "hostname": hostname, "pid": pid}
