"""A tiny DAG with what the harness must report: XComs, a mapped task, a failure, a deferral."""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import DAG, BaseHook, BaseOperator
from airflow_harness import EchoTrigger

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


class NumbersOperator(BaseOperator):
    """Return the run's ``conf["numbers"]`` (or ``default``) and push their count as a second key."""

    def __init__(self, *, default: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default = default

    def execute(self, context: Context) -> list[int]:
        numbers = list((context["dag_run"].conf or {}).get("numbers", self.default))
        context["ti"].xcom_push(key="count", value=len(numbers))
        return numbers


class DoubleOperator(BaseOperator):
    def __init__(self, *, number: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.number = number

    def execute(self, context: Context) -> int:
        return self.number * 2


class ConnectionOperator(BaseOperator):
    """Read a connection and an env var inside the task, as a hook would."""

    def execute(self, context: Context) -> dict[str, Any]:
        conn = BaseHook.get_connection("famulor_default")
        return {"host": conn.host, "marker": os.environ.get("HARNESS_MARKER")}


class DeferringOperator(BaseOperator):
    """Defer on a trigger that fires at once; return the event."""

    def execute(self, context: Context) -> None:
        self.defer(trigger=EchoTrigger({"echo": self.task_id}), method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return event


class ExplodingOperator(BaseOperator):
    def execute(self, context: Context) -> None:
        raise RuntimeError("boom")


with DAG(dag_id="harness_dag", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    numbers = NumbersOperator(task_id="numbers", default=[1, 2, 3])
    DoubleOperator.partial(task_id="double").expand(number=numbers.output)
    ConnectionOperator(task_id="connection")
    DeferringOperator(task_id="deferring")
    ExplodingOperator(task_id="explode", retries=0)
