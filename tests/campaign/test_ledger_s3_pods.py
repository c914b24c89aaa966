"""
Campaign tries in separate processes with no shared disk, one S3 ledger between them.

Each "pod" is ``campaign_pod.py`` in a process of its own with its own ``AIRFLOW_HOME`` folder;
the only things the pods share are the sandbox (over HTTP, what it billed is counted) and the
ledger in moto's S3 server on 127.0.0.1. Every pod is stopped by its PID at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server, aws_conn_env

from famulor_provider.campaign.ledger import iter_ledger_events, ledger_file_path, read_campaign_ledger
from famulor_provider.testing import FamulorSandbox

pytest.importorskip("airflow.providers.amazon", reason="needs airflow-provider-famulor[amazon]")

POD = Path(__file__).with_name("campaign_pod.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "famulor-ledgers"
LEDGER_PATH = f"s3://{BUCKET}/pods"
LEDGER = ledger_file_path(
    LEDGER_PATH, dag_id="famulor_pods", run_id="manual__pods", task_id="campaign", map_index=-1
)
IN_FLIGHT_WINDOW = 16  # the campaign's threads at most


def phones(count: int) -> set[str]:
    return {f"+1415700{n:04d}" for n in range(count)}


class Pod:
    """One try in its own process, folder and log files."""

    def __init__(self, folder: Path, env: dict[str, str], try_number: int, count: int, rate: float) -> None:
        folder.mkdir(parents=True)
        self.out = folder / "stdout.log"
        self.err = folder / "stderr.log"
        env = {**os.environ, **env, "AIRFLOW_HOME": str(folder / "airflow")}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(POD), LEDGER_PATH, str(try_number), str(count), str(rate)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=REPO_ROOT,
            )
        self.pid = self.process.pid

    def result(self, timeout: float = 120) -> dict[str, Any]:
        self.process.wait(timeout=timeout)
        lines = [line for line in self.out.read_text().splitlines() if line.startswith("{")]
        assert lines, (self.out.read_text()[-2000:], self.err.read_text()[-3000:])
        return json.loads(lines[-1])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)  # SIGKILL works on a stopped process too
            self.process.wait(timeout=30)


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Pod]]:
    """``start(name, try_number, count, rate)`` starts a pod; the sandbox is ``start.sandbox``."""
    pods: list[Pod] = []
    with S3Server() as s3, FamulorSandbox(send_rate_limit=None) as sandbox:
        s3.create_bucket(BUCKET)
        aws = aws_conn_env(s3.url)
        for name, value in aws.items():  # for reading the ledger here
            monkeypatch.setenv(name, value)

        def start(name: str, try_number: int, count: int, rate: float) -> Pod:
            pod = Pod(tmp_path / name, {**sandbox.env(), **aws}, try_number, count, rate)
            pods.append(pod)
            return pod

        start.sandbox = sandbox  # type: ignore[attr-defined]
        try:
            yield start
        finally:
            for pod in pods:
                pod.stop()


def billed(sandbox: FamulorSandbox) -> Counter[str]:
    return Counter(row["recipient_phone"] for row in sandbox.ledger)


def tries() -> list[dict[str, Any]]:
    return [event for event in iter_ledger_events(LEDGER) if event["type"] == "try"]


def test_a_pod_killed_mid_campaign_is_resumed_by_another_pod_from_s3(world: Callable[..., Pod]) -> None:
    sandbox: FamulorSandbox = world.sandbox  # type: ignore[attr-defined]
    everyone = phones(300)
    first = world("pod-a", 1, 300, 50)
    wait_until("pod A to bill 100", lambda: len(sandbox.ledger) >= 100)
    os.kill(first.pid, signal.SIGKILL)
    assert first.process.wait(timeout=30) == -signal.SIGKILL
    billed_at_kill = len(sandbox.ledger)
    assert billed_at_kill < 300, "the campaign ended before the kill: nothing was tested"

    second = world("pod-b", 2, 300, 50)  # another process, another folder: only S3 in common
    result = second.result()

    counts = billed(sandbox)
    records = {r["recipient_phone"]: r for r in read_campaign_ledger(LEDGER)}
    unknown = {phone for phone, r in records.items() if r["outcome"] == "unknown"}
    sent = {phone for phone, r in records.items() if r["outcome"] == "sent"}
    assert max(counts.values()) == 1  # nobody billed twice
    assert set(records) == everyone and sent | unknown == everyone
    assert len(unknown) <= IN_FLIGHT_WINDOW, unknown  # in flight at the kill (or its outcome not written)
    assert all(counts[phone] == 1 for phone in sent)  # the rest sent, once
    assert all(records[phone]["attempts"] == 1 for phone in unknown)  # never sent again
    assert set(counts) == sent | {phone for phone in unknown if counts[phone]}
    assert [(t["try_number"], t["pid"]) for t in tries()] == [(1, first.pid), (2, second.pid)]
    if unknown:  # the retry does not send them again: it fails, naming them
        assert result["error"] == "AirflowFailException", result
        assert f"{len(unknown)} whose delivery is unknown" in result["message"]
    else:
        assert result["sent"] == 300, result
    print(
        f"\ntwo pods: pod A SIGKILLed at {billed_at_kill} billed; pod B sent {len(counts) - billed_at_kill}; "
        f"unknown {len(unknown)} (billed {sum(counts[p] for p in unknown)}), duplicates 0"
    )


def test_a_paused_pod_that_wakes_after_a_takeover_stops_with_the_conflict(world: Callable[..., Pod]) -> None:
    sandbox: FamulorSandbox = world.sandbox  # type: ignore[attr-defined]
    everyone = phones(100)
    zombie = world("pod-a", 1, 100, 10)
    wait_until("pod A to bill 30", lambda: len(sandbox.ledger) >= 30)
    os.kill(zombie.pid, signal.SIGSTOP)  # a paused pod, a partition: presumed dead
    billed_at_pause = len(sandbox.ledger)

    second = world("pod-b", 2, 100, 10)  # takes over and continues
    taken_over = second.result()
    billed_by_takeover = len(sandbox.ledger)
    os.kill(zombie.pid, signal.SIGCONT)
    woken = zombie.result(timeout=60)
    billed_in_the_end = len(sandbox.ledger)

    # The zombie finished at most the one send it had in flight, then stopped, naming the takeover.
    assert billed_in_the_end - billed_by_takeover <= 1
    assert woken["error"] == "FamulorLedgerConflictError", woken
    assert f"try 2 on host {os.uname().nodename} (pid {second.pid})" in woken["message"]
    assert "sends nothing more" in woken["message"]
    counts = billed(sandbox)
    assert max(counts.values()) == 1  # 0 duplicates over the whole campaign
    records = {r["recipient_phone"]: r["outcome"] for r in read_campaign_ledger(LEDGER)}
    assert set(records) == everyone and set(records.values()) <= {"sent", "unknown"}
    unknown = {phone for phone, outcome in records.items() if outcome == "unknown"}
    assert len(unknown) <= 2, unknown  # in flight at the pause, or its outcome not yet written
    assert set(counts) >= everyone - unknown
    # The zombie wrote nothing after the takeover's try line.
    events = list(iter_ledger_events(LEDGER))
    takeover = next(n for n, e in enumerate(events) if e["type"] == "try" and e["pid"] == second.pid)
    assert [e for e in events[takeover:] if e["type"] == "try" and e["pid"] == zombie.pid] == []
    assert "error" in taken_over or taken_over["sent"] == 100
    takeover_sent, zombie_sent = billed_by_takeover - billed_at_pause, billed_in_the_end - billed_by_takeover
    print(
        f"\nzombie: paused at {billed_at_pause} billed; the takeover billed {takeover_sent}; "
        f"the zombie after waking {zombie_sent}; unknown {len(unknown)}; duplicates 0"
    )
