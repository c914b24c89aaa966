"""ListWhatsAppSendersOperator through dag.test() against the sandbox over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from famulor_provider.exceptions import FamulorValidationError
from famulor_provider.log_tables import sender_table
from famulor_provider.models import WhatsAppSender
from famulor_provider.operators.whatsapp import ListWhatsAppSendersOperator
from famulor_provider.testing import SANDBOX_API_KEY

if TYPE_CHECKING:
    from famulor_provider.testing import FamulorSandbox

DAG_FILE = Path(__file__).parents[1] / "dags" / "famulor_list_senders.py"
DAG_ID = "famulor_list_senders"


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
    assert pushed[0] == {
        "id": 12,
        "phone_number": "+14155551234",
        "display_name": "Acme Corp Support",
        "status": "online",
        "quality_rating": "GREEN",
        "messaging_limit": 10000,
        "messaging_limit_formatted": "10,000 / 24hr",
    }
    assert result.xcom("list_senders", key="sender_ids") == [12, 15, 21, 27]
    # the output feeds dynamic task mapping directly: one mapped task instance per sender
    assert [ti.return_value for ti in result.mapped("sender_id_of")] == [12, 15, 21, 27]
    queries = [r.query for r in famulor_sandbox.requests if r.path.endswith("/user/whatsapp/senders")]
    assert queries == [{"status": "online"}]


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


def test_templated_conn_id(
    run_dag: Any, famulor_sandbox: FamulorSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_OTHER", famulor_sandbox.connection_json())
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAMULOR_DEFAULT",
        json.dumps({"conn_type": "famulor", "password": "x", "host": "http://127.0.0.1:9/api"}),
    )
    result = run_dag(DAG_FILE, DAG_ID, conf={"conn_id": "famulor_other"})
    assert ids(result) == [12, 15, 21, 27]


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
    assert len([r for r in famulor_sandbox.requests if r.path.endswith("/user/whatsapp/senders")]) == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"if_empty": "explode"}, "if_empty"),
        ({"order_by": "price"}, "order_by"),
        ({"min_messaging_limit": "lots"}, "min_messaging_limit"),
        ({"sender_ids": ["twelve"]}, "sender_ids"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message_before_any_request(
    kwargs: dict[str, Any], field: str
) -> None:
    operator = ListWhatsAppSendersOperator(task_id="bad", famulor_conn_id="not_even_defined", **kwargs)
    with pytest.raises(FamulorValidationError) as err:
        operator.execute(context={})  # type: ignore[arg-type]
    assert err.value.field == field
    assert str(next(iter(kwargs.values()))).strip("[]'") in str(err.value)


def test_constructor_does_no_io_and_templates_everything() -> None:
    operator = ListWhatsAppSendersOperator(task_id="t", famulor_conn_id="{{ var.value.nope }}", if_empty="??")
    assert "hook" not in operator.__dict__
    assert set(ListWhatsAppSendersOperator.template_fields) == {
        "famulor_conn_id",
        "status",
        "quality_ratings",
        "min_messaging_limit",
        "sender_ids",
        "phone_numbers",
        "order_by",
        "if_empty",
    }


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
