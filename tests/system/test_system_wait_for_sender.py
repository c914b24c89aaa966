"""
System test: the ``famulor_wait_for_sender`` example DAG on a real Airflow deployment.

Starts the real components on 127.0.0.1 in a temporary ``AIRFLOW_HOME`` with a SQLite DB
(Airflow 3: api-server, scheduler with the LocalExecutor, dag-processor, triggerer;
Airflow 2.11: scheduler with the SequentialExecutor, triggerer), triggers the DAG and checks
that the sensor really deferred (task instance ``deferred``, the triggerer polling the
sandbox) and resumed in the same try once the sender came online. Every process is stopped by
its id afterwards, also when the test fails.

Slow (about a minute): runs only with ``FAMULOR_SYSTEM_TEST=1`` (``make test-system``).
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("FAMULOR_SYSTEM_TEST") != "1", reason="system test: run with `make test-system`"
)

EXAMPLE_DAG = Path(__file__).resolve().parents[2] / "example_dags" / "famulor_wait_for_sender.py"
DAG_ID = "famulor_wait_for_sender"
SENSOR = "wait_for_sender"
SENDERS_PATH = "/api/user/whatsapp/senders"
AIRFLOW_3 = int(importlib.metadata.version("apache-airflow").split(".")[0]) >= 3
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AirflowDeployment:
    """Airflow components as child processes of this test, sharing one temporary home.

    :param home: the ``AIRFLOW_HOME``.
    :param extra_env: more environment variables (connections, ...).
    """

    def __init__(self, home: Path, extra_env: dict[str, str]) -> None:
        self.home = home
        self.db = home / "airflow.db"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
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
                **extra_env,
            }
        )
        self.env = env
        self.api_port = port

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run one ``airflow`` command to its end; its output."""
        done = subprocess.run(
            [AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        """Start a long-running component in its own process group, logging to ``<home>/<name>.log``."""
        with (self.home / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [AIRFLOW, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        """Stop every component this deployment started (and its children), by process group id."""
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
                assert process.poll() is None, f"airflow {name} exited early\n{self.logs()}"
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what}\n{self.logs()}")

    def logs(self, lines: int = 40) -> str:
        parts = []
        for name in self.processes:
            text = (self.home / f"{name}.log").read_text(errors="replace").splitlines()
            parts.append(f"--- {name} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def task_state(self, task_id: str) -> str | None:
        rows = self.query("SELECT state FROM task_instance WHERE dag_id = ? AND task_id = ?", DAG_ID, task_id)
        return rows[0][0] if rows else None


@pytest.fixture
def deployment(tmp_path: Path, famulor_sandbox: Any) -> Iterator[AirflowDeployment]:
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    shutil.copy(EXAMPLE_DAG, home / "dags")
    airflow = AirflowDeployment(
        home,
        {
            **famulor_sandbox.env(),
            "FAMULOR_EXAMPLE_POKE_INTERVAL": "1",
        },
    )
    try:
        airflow.cli("db", "migrate")
        if AIRFLOW_3:
            airflow.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(airflow.api_port))
            airflow.start("dag-processor", "dag-processor")
        # --skip-serve-logs: no log servers on every interface (fixed ports 8793/8794).
        airflow.start("scheduler", "scheduler", "--skip-serve-logs")
        airflow.start("triggerer", "triggerer", "--skip-serve-logs")
        yield airflow
    finally:
        airflow.stop()


def test_the_example_dag_defers_in_the_triggerer_and_resumes(
    deployment: AirflowDeployment, famulor_sandbox: Any
) -> None:
    started = time.monotonic()
    deployment.wait_until(
        "the DAG to be parsed", lambda: deployment.query("SELECT 1 FROM dag WHERE dag_id = ?", DAG_ID)
    )
    deployment.cli("dags", "trigger", DAG_ID)

    # Sender 33 is "connecting": the first poke fails to match and the sensor defers.
    deployment.wait_until("the sensor to defer", lambda: deployment.task_state(SENSOR) == "deferred")
    [(next_method,)] = deployment.query(
        "SELECT next_method FROM task_instance WHERE dag_id = ? AND task_id = ?", DAG_ID, SENSOR
    )
    assert next_method == "execute_complete"
    classpaths = [row[0] for row in deployment.query("SELECT classpath FROM trigger")]
    assert classpaths == ["famulor_provider.triggers.whatsapp.WhatsAppSenderTrigger"]

    # The triggerer polls the sandbox while the task waits, without a worker.
    polls_when_deferred = sum(1 for r in famulor_sandbox.requests if r.path == SENDERS_PATH)
    deployment.wait_until(
        "the triggerer to poll",
        lambda: sum(1 for r in famulor_sandbox.requests if r.path == SENDERS_PATH) >= polls_when_deferred + 2,
        timeout=60,
    )
    assert deployment.task_state(SENSOR) == "deferred"

    famulor_sandbox.set_sender(33, status="online")
    deployment.wait_until(
        "the DAG run to finish",
        lambda: deployment.query(
            "SELECT state FROM dag_run WHERE dag_id = ? AND state IN ('success', 'failed')", DAG_ID
        ),
    )

    assert deployment.query("SELECT state FROM dag_run WHERE dag_id = ?", DAG_ID) == [("success",)], (
        deployment.logs()
    )
    rows = deployment.query(
        "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? ORDER BY task_id", DAG_ID
    )
    assert rows == [("prepare_campaign", "success", 1), (SENSOR, "success", 1)]  # resumed, not retried
    [(value,)] = deployment.query(
        "SELECT value FROM xcom WHERE dag_id = ? AND task_id = 'prepare_campaign' AND key = 'return_value'",
        DAG_ID,
    )
    assert json.loads(value) == {
        "sender_id": 33,
        "from": "+14155550199",
        "template_name": "welcome",
        "daily_capacity": 250,
    }
    print(f"system test: deferred, resumed and finished in {time.monotonic() - started:.0f} s")
