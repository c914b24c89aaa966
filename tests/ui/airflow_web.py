"""
Processes of the UI tests: the Famulor sandbox and Airflow's web server, started on 127.0.0.1 with
a home of their own and stopped by PID (their process group).

Imported by ``conftest.py`` and the test module (``tests/ui`` is on ``sys.path`` in pytest's default
import mode, like ``tests/airflow_harness.py``); it imports neither Airflow nor Playwright.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet

UI_DIR = Path(__file__).resolve().parent
REPO_ROOT = UI_DIR.parents[1]
SERVER_START_TIMEOUT = 120.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """
    Start ``args`` in its own process group (so its workers stop with it), output to ``log_path``.

    It runs in the log's directory: gunicorn puts its working directory first on ``sys.path``,
    which in the checkout would shadow the installed package.
    """
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args,
            cwd=log_path.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop the process group led by ``process`` (our own PID): SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class SandboxProcess:
    """The Famulor sandbox running as a separate process."""

    base_url: str
    api_key: str = field(repr=False)


@dataclass
class AirflowServer:
    """A running Airflow web server of the installed line, and how to reach it."""

    version: str
    base_url: str
    home: Path
    env: dict[str, str] = field(repr=False)
    username: str
    password: str = field(repr=False)
    log_path: Path

    @property
    def major(self) -> int:
        return int(self.version.split(".", 1)[0])

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``airflow ARGS`` against this server's home and DB."""
        return run_airflow(list(args), self.env, timeout=timeout)

    def token(self) -> str:
        """A bearer token for the REST API (Airflow 3), obtained like a user: ``POST /auth/token``."""
        response = requests.post(
            f"{self.base_url}/auth/token",
            json={"username": self.username, "password": self.password},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


def airflow_executable() -> str:
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else shutil.which("airflow") or "airflow"


def run_airflow(
    args: list[str], env: dict[str, str], timeout: float = 180.0
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [airflow_executable(), *args],
        cwd=env["AIRFLOW_HOME"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        pytest.fail(f"`airflow {' '.join(args)}` failed with exit code {result.returncode}:\n{output}")
    return result


def server_env(home: Path) -> dict[str, str]:
    """This process's environment without any Airflow setting, plus a home of our own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # as every deployment has: the form's password is stored encrypted
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            # The Test button of the connection form is off by default since Airflow 2.7.
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Airflow web server exited with {process.returncode}:\n{log_tail(log_path)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.25)
    pytest.fail(
        f"the Airflow web server was not ready within {SERVER_START_TIMEOUT:.0f} s:\n{log_tail(log_path)}"
    )
