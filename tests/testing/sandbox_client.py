"""Helpers of the sandbox tests: HTTP calls with the sandbox's key, waiting, and the CLI."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import requests

from famulor_provider.testing import SANDBOX_API_KEY

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from famulor_provider.testing import FamulorSandbox

AUTH = {"Authorization": f"Bearer {SANDBOX_API_KEY}", "Accept": "application/json"}
PHONE = "+4915112345678"
OTHER = "+4915100000000"


def call(sb: FamulorSandbox, method: str, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("headers", AUTH)
    return requests.request(method, sb.base_url + path, timeout=5, **kwargs)


def send(sb: FamulorSandbox, **body: Any) -> requests.Response:
    payload = {"sender_id": 12, "template_id": 1201, "recipient_phone": PHONE, "variables": {"1": "A-17"}}
    return call(sb, "POST", "/user/whatsapp/send", json={**payload, **body})


def freeform(sb: FamulorSandbox, **body: Any) -> requests.Response:
    payload = {"sender_id": 12, "recipient_phone": PHONE, "message": "Your parcel left the warehouse."}
    return call(sb, "POST", "/user/whatsapp/send-freeform", json={**payload, **body})


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def is_listening(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/api/user/me", timeout=1)
    except requests.ConnectionError:
        return False
    return True


@contextlib.contextmanager
def serve(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``python -m famulor_provider.testing serve ARGS`` and its port; killed by PID if still running."""
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "famulor_provider.testing", "serve", "--port-file", str(port_file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: port_file.exists() or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield proc, int(port_file.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the CLI and return what it printed; it must exit 0."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    return out
