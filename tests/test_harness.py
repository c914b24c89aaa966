"""The harness runs real DAGs with dag.test() and reports states, try numbers and XComs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from airflow.triggers.base import TriggerEvent
from airflow_harness import DagRunResult, DagRunTimeout, EchoTrigger

HARNESS_DAG = Path(__file__).parent / "dags" / "harness_dag.py"
RunDag = Callable[..., DagRunResult]


@pytest.fixture(autouse=True)
def famulor_connection(airflow_conn: Callable[..., str]) -> None:
    airflow_conn("famulor_default", conn_type="http", host="sandbox.invalid")


def test_states_map_indexes_xcoms_and_deferral(run_dag: RunDag) -> None:
    result = run_dag(HARNESS_DAG, "harness_dag", conf={"numbers": [4, 5]}, env={"HARNESS_MARKER": "set"})

    assert result.state == "failed"
    assert result.states == {
        "connection": "success",
        "deferring": "success",
        "double[0]": "success",
        "double[1]": "success",
        "explode": "failed",
        "numbers": "success",
    }
    assert result.xcom("numbers") == [4, 5]
    assert result.xcom("numbers", key="count") == 2
    assert [(ti.map_index, ti.return_value) for ti in result.mapped("double")] == [(0, 8), (1, 10)]
    assert result.xcom("connection") == {"host": "sandbox.invalid", "marker": "set"}
    # The trigger ran inline and the task resumed in the same try, on every line.
    assert result.xcom("deferring") == {"echo": "deferring"}
    assert result.ti("deferring").try_number == 1
    assert result.ti("explode").try_number == 1
    assert result.ti("explode").xcom == {}
    assert "HARNESS_MARKER" not in os.environ


def test_each_call_is_a_new_run(run_dag: RunDag) -> None:
    first = run_dag(HARNESS_DAG, "harness_dag")
    second = run_dag(HARNESS_DAG, "harness_dag", conf={"numbers": [7]})

    assert first.run_id != second.run_id
    assert [ti.return_value for ti in first.mapped("double")] == [2, 4, 6]
    assert [ti.return_value for ti in second.mapped("double")] == [14]
    with pytest.raises(KeyError, match="double"):
        second.ti("double", map_index=1)


def test_a_run_that_hangs_is_stopped(run_dag: RunDag, monkeypatch: pytest.MonkeyPatch) -> None:
    async def never_fires(self: EchoTrigger) -> AsyncIterator[TriggerEvent]:
        await asyncio.Event().wait()
        yield TriggerEvent({})  # pragma: no cover

    monkeypatch.setattr(EchoTrigger, "run", never_fires)
    with pytest.raises(DagRunTimeout, match="harness_dag"):
        run_dag(HARNESS_DAG, "harness_dag", timeout=3)
