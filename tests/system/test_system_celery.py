"""
System test: a task whose Celery worker is SIGKILLed mid-try is retried on the other worker.

A real deployment (``deployment.py``): redis-server, the CeleryExecutor and two Celery workers
with one slot each, on 127.0.0.1 in a temporary home. The ``celery_kill_probe`` DAG's task
records every try in the shared folder and sleeps on try 1; the test kills that try's worker
(its whole process tree, SIGKILL), the scheduler fails the task once its heartbeat times out
and the retry runs on the surviving worker. Every process is stopped by its id afterwards.

Slow (about 1.5 minutes): runs only with ``FAMULOR_SYSTEM_TEST=1`` (``make test-system``); on
Airflow 3 only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deployment import HEARTBEAT_TIMEOUT, NEEDS_CELERY, SYSTEM_TEST, AirflowDeployment, deployed

pytestmark = [SYSTEM_TEST, NEEDS_CELERY]

PROBE_DAG = Path(__file__).resolve().parent / "dags" / "celery_kill_probe.py"
DAG_ID = "celery_kill_probe"
TASK_ID = "probe"
RECORD_FILE = "celery_kill_probe.jsonl"


@pytest.fixture
def celery_deployment(tmp_path: Path) -> Iterator[AirflowDeployment]:
    env = {"FAMULOR_PROBE_SLEEP": "60"}
    # No triggerer: the probe never defers, and the two CPUs of a CI machine are busy enough.
    with deployed(tmp_path, PROBE_DAG, env, executor="celery", workers=2, triggerer=False) as airflow:
        yield airflow


def records(deployment: AirflowDeployment) -> list[dict[str, Any]]:
    path = deployment.shared / RECORD_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_task_whose_worker_is_killed_is_retried_on_the_other_worker(
    celery_deployment: AirflowDeployment,
) -> None:
    deployment = celery_deployment
    started = time.monotonic()
    deployment.wait_for_dag(DAG_ID)
    deployment.wait_until_ready()
    ready = time.monotonic()
    deployment.cli("dags", "trigger", DAG_ID)

    [first] = deployment.wait_until("try 1 to run", lambda: records(deployment), timeout=90)
    assert first["try_number"] == 1
    victim = deployment.worker_of(first["pid"])
    assert victim is not None and victim == first["worker"], (first, victim)
    ti = deployment.task_instance(DAG_ID, TASK_ID)
    assert ti is not None and ti["state"] == "running", ti
    survivor = next(name for name in deployment.worker_names if name != victim)

    killed_pids = deployment.kill_worker(victim)
    assert first["pid"] in killed_pids
    killed = time.monotonic()

    deployment.wait_until(
        "the scheduler to fail try 1 for its missing heartbeat",
        lambda: (deployment.task_instance(DAG_ID, TASK_ID) or {}).get("try_number", 1) >= 2,
        timeout=HEARTBEAT_TIMEOUT + 50,
    )
    noticed = time.monotonic()
    deployment.wait_until(
        "the DAG run to finish",
        lambda: deployment.query(
            "SELECT state FROM dag_run WHERE dag_id = ? AND state IN ('success', 'failed')", DAG_ID
        ),
        timeout=90,
    )
    finished = time.monotonic()

    ti = deployment.task_instance(DAG_ID, TASK_ID)
    assert ti is not None and ti["state"] == "success", (ti, deployment.logs())
    assert ti["try_number"] >= 2
    assert deployment.query("SELECT state FROM dag_run WHERE dag_id = ?", DAG_ID) == [("success",)]
    tries = records(deployment)
    assert [r["try_number"] for r in tries][:2] == [1, 2], tries
    assert tries[-1]["try_number"] == ti["try_number"]
    assert all(r["worker"] == survivor for r in tries[1:]), tries  # the victim is gone
    assert all(r["pid"] != first["pid"] for r in tries[1:])
    # Noticed by the heartbeat timeout, not by the worker reporting a failure (it is dead).
    assert "without a heartbeat" in deployment.log("scheduler")

    print(
        f"\nsystem test (celery): try 1 on {victim} (pid {first['pid']}), killed with SIGKILL; "
        + ", ".join(f"try {r['try_number']} on {r['worker']} (pid {r['pid']})" for r in tries[1:])
        + f"\n  deployment ready {ready - started:.0f} s, trigger to try 1 {killed - ready:.0f} s, "
        f"kill to retry {noticed - killed:.0f} s, retry to success {finished - noticed:.0f} s, "
        f"total {finished - started:.0f} s"
    )
