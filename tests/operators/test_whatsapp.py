"""ListWhatsAppSendersOperator through dag.test() against the sandbox over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from famulor_fixtures import SENDERS, sender_requests, set_sandbox_conn

from famulor_provider.exceptions import FamulorValidationError
from famulor_provider.log_tables import sender_table
from famulor_provider.models import WhatsAppSender
from famulor_provider.operators.whatsapp import ListWhatsAppSendersOperator
from famulor_provider.testing import SANDBOX_API_KEY

if TYPE_CHECKING:
    from famulor_provider.testing import FamulorSandbox

DAG_FILE = Path(__file__).parents[1] / "dags" / "famulor_list_senders.py"
DAG_ID = "famulor_list_senders"
OPERATOR_DAGS = Path(__file__).parent / "dags" / "famulor_operator_cases.py"


def listed(run_dag: Any, sandbox: FamulorSandbox, **conf: Any) -> Any:
    return run_dag(DAG_FILE, DAG_ID, conf=conf, env=sandbox.env())


def ids(result: Any) -> list[int]:
    return [s["id"] for s in result.xcom("list_senders")]


def test_default_lists_online_senders_in_api_order(run_dag: Any, famulor_sandbox: FamulorSandbox) -> None:
    result = listed(run_dag, famulor_sandbox)
    assert result.ti("list_senders").state == "success"
    pushed = result.xcom("list_senders")
    online = [s for s in famulor_sandbox.senders if s["status"] == "online"]
    assert [s["id"] for s in pushed] == [s["id"] for s in online] == [12, 15, 21, 27]
    assert pushed[0] == SENDERS[0]  # the API's fields, as the API lists them
    assert result.xcom("list_senders", key="sender_ids") == [12, 15, 21, 27]
    # the output feeds dynamic task mapping directly: one mapped task instance per sender
    assert [ti.return_value for ti in result.mapped("sender_id_of")] == [12, 15, 21, 27]
    assert [r.query for r in sender_requests(famulor_sandbox)] == [{"status": "online"}]


def test_quality_filter_and_capacity_order(run_dag: Any, famulor_sandbox: FamulorSandbox) -> None:
    result = listed(run_dag, famulor_sandbox, quality_ratings=["GREEN", "YELLOW"], order_by="capacity")
    assert ids(result) == [15, 12, 21]  # GREEN unlimited, GREEN 10,000, YELLOW 2,000


def test_capacity_order_over_all_statuses(run_dag: Any, famulor_sandbox: FamulorSandbox) -> None:
    result = listed(run_dag, famulor_sandbox, status="all", order_by="capacity")
    # online first (GREEN > YELLOW > RED), then the rest: offline GREEN, connecting unrated
    assert ids(result) == [15, 12, 21, 27, 31, 33]


def test_min_limit_ids_and_phones(run_dag: Any, famulor_sandbox: FamulorSandbox) -> None:
    assert ids(listed(run_dag, famulor_sandbox, min_messaging_limit=5000)) == [12, 15]  # unlimited passes
    assert ids(listed(run_dag, famulor_sandbox, sender_ids=[21, 27, 31])) == [21, 27]  # 31 is offline
    phones = ["+44 20 7123 4567", "+14155551234"]
    assert ids(listed(run_dag, famulor_sandbox, phone_numbers=phones)) == [12, 15]


@pytest.mark.parametrize(
    ("if_empty", "state", "pushed"),
    [("succeed", "success", []), ("skip", "skipped", None), ("fail", "failed", None)],
)
def test_if_empty(
    run_dag: Any, famulor_sandbox: FamulorSandbox, if_empty: str, state: str, pushed: Any
) -> None:
    result = listed(run_dag, famulor_sandbox, sender_ids=[999], if_empty=if_empty)
    assert result.ti("list_senders").state == state
    assert result.xcom("list_senders") == pushed
    assert result.mapped("sender_id_of") == [] or all(
        t.state == "skipped" for t in result.mapped("sender_id_of")
    )


def test_every_templated_argument_renders_in_a_real_run(
    run_dag: Any, famulor_sandbox: FamulorSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_OTHER", famulor_sandbox.connection_json())
    set_sandbox_conn(monkeypatch, famulor_sandbox, host="http://127.0.0.1:9/api")
    conf = {
        "conn_id": "famulor_other",
        "status": "ALL",
        "quality_ratings": ["GREEN", None],
        "min_messaging_limit": 250,
        "sender_ids": [15, 27, 31, 33],
        "phone_numbers": ["+44 20 7123 4567", "+33142685300", "+61291234567", "+1 415 555 0199"],
        "order_by": "capacity",
        "if_empty": "fail",
    }

    result = run_dag(DAG_FILE, DAG_ID, conf=conf)

    # 27 is RED; of GREEN or unrated 15, 31, 33: online first, then GREEN before unrated.
    assert ids(result) == [15, 31, 33]
    assert result.xcom("list_senders", key="sender_ids") == [15, 31, 33]
    assert [r.query for r in sender_requests(famulor_sandbox)] == [{"status": "all"}]
    # if_empty="fail" rendered too: with no match the task fails instead of pushing [].
    failed = run_dag(DAG_FILE, DAG_ID, conf={**conf, "sender_ids": [27]})  # RED: no match
    assert failed.ti("list_senders").state == "failed"


def test_status_offline_lists_the_offline_senders(run_dag: Any, famulor_sandbox: FamulorSandbox) -> None:
    result = listed(run_dag, famulor_sandbox, status="offline")

    assert result.ti("list_senders").state == "success"
    assert ids(result) == [31]
    assert result.xcom("list_senders")[0]["status"] == "offline"
    assert [r.query for r in sender_requests(famulor_sandbox)] == [{"status": "offline"}]
    assert [r.status for r in sender_requests(famulor_sandbox)] == [200]


def test_do_xcom_push_false_pushes_nothing(run_dag: Any, famulor_sandbox: FamulorSandbox) -> None:
    result = run_dag(OPERATOR_DAGS, "famulor_list_senders_no_xcom")

    ti = result.ti("list_senders")
    assert ti.state == "success"
    assert ti.xcom == {}  # neither return_value nor sender_ids
    assert len(sender_requests(famulor_sandbox)) == 1  # it did list


def test_api_errors_fail_the_task_and_key_stays_secret(run_dag: Any, famulor_sandbox: FamulorSandbox) -> None:
    famulor_sandbox.inject(
        "status",
        path="/user/whatsapp/senders",
        status=401,
        times=5,
        body={"message": f"Unauthenticated: {SANDBOX_API_KEY}"},
    )
    result = listed(run_dag, famulor_sandbox)
    assert result.ti("list_senders").state == "failed"
    assert SANDBOX_API_KEY not in json.dumps([t.xcom for t in result.task_instances], default=str)


def test_transient_faults_are_retried_inside_the_task(
    run_dag: Any, famulor_sandbox: FamulorSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from famulor_provider.hooks.famulor import FamulorHook

    monkeypatch.setattr(FamulorHook, "sleep", staticmethod(lambda seconds: None))
    famulor_sandbox.inject("status", path="/user/whatsapp/senders", status=503, times=2)
    result = listed(run_dag, famulor_sandbox)
    assert ids(result) == [12, 15, 21, 27]
    assert len(sender_requests(famulor_sandbox)) == 3


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"status": "away"}, "status", "'online', 'offline', 'all'"),
        ({"if_empty": "explode"}, "if_empty", "'succeed', 'skip', 'fail'"),
        ({"order_by": "price"}, "order_by", "None, 'capacity'"),
        ({"min_messaging_limit": "lots"}, "min_messaging_limit", "whole number"),
        ({"sender_ids": ["twelve"]}, "sender_ids", "whole number"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message_before_any_request(
    famulor_sandbox: FamulorSandbox, kwargs: dict[str, Any], field: str, allowed: str
) -> None:
    operator = ListWhatsAppSendersOperator(task_id="bad", **kwargs)
    with pytest.raises(FamulorValidationError) as err:
        operator.execute(context={})  # type: ignore[arg-type]
    assert err.value.field == field
    assert field in str(err.value)
    assert str(next(iter(kwargs.values()))).strip("[]'") in str(err.value)
    assert allowed in str(err.value)
    assert famulor_sandbox.requests == []


def test_sender_table() -> None:
    senders = [
        WhatsAppSender(12, "+14155551234", "Acme Corp Support", "online", "GREEN", 10000, "10,000 / 24hr"),
        WhatsAppSender(33, "+4930123456", None, "connecting", None, None, None),
    ]
    assert sender_table(senders).splitlines() == [
        "id  phone_number  display_name       status      quality  limit/24h",
        "12  +14155551234  Acme Corp Support  online      GREEN    10000",
        "33  +4930123456                      connecting  -        unlimited",
    ]
