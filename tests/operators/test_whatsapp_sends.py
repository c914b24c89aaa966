"""Template and send operators against the sandbox: one message per task, and no retry sends twice."""

from __future__ import annotations

import importlib.metadata
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowTaskTimeout
from famulor_fixtures import PHONE, posts, sender_requests, set_sandbox_conn

from famulor_provider.exceptions import (
    FamulorAPIError,
    FamulorAuthError,
    FamulorConnectionError,
    FamulorDeliveryUnknownError,
    FamulorError,
    FamulorInsufficientBalanceError,
    FamulorInvalidPhoneError,
    FamulorRateLimitError,
    FamulorSenderOfflineError,
    FamulorSessionExpiredError,
    FamulorTemplateError,
    FamulorValidationError,
)
from famulor_provider.operators.whatsapp import (
    ListWhatsAppTemplatesOperator,
    SendWhatsAppFreeformOperator,
    SendWhatsAppTemplateOperator,
    send_failures,
)
from famulor_provider.privacy import mask_phone
from famulor_provider.testing import SANDBOX_API_KEY

OPERATOR_DAGS = Path(__file__).parent / "dags" / "famulor_operator_cases.py"
AIRFLOW_2 = importlib.metadata.version("apache-airflow").startswith("2.")


def template_op(**kwargs: Any) -> SendWhatsAppTemplateOperator:
    args = {"task_id": "send", "sender_id": 12, "recipient_phone": PHONE, "template_name": "order_update"}
    return SendWhatsAppTemplateOperator(**{**args, **kwargs})


# -- templates rendered in a real run ---------------------------------------------------------------


def test_every_templated_argument_renders_in_a_real_run(
    run_dag: Any,
    famulor_sandbox: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The templated connection id must be rendered before the (lazy) hook is built.
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_TEMPLATED", famulor_sandbox.connection_json())
    set_sandbox_conn(monkeypatch, famulor_sandbox, host="http://127.0.0.1:9/api")
    famulor_sandbox.open_session(12, "+4915112345679", minutes=60)

    result = run_dag(OPERATOR_DAGS, "famulor_templated_sends", conf={"conn_id": "famulor_templated"})

    assert set(result.states.values()) == {"success"}, result.states
    listed = result.xcom("list_templates")
    assert [(t["name"], t["language"], t["status"]) for t in listed] == [
        ("welcome", "en", "approved"),
        ("spring_sale", "en", "pending"),  # status "all" rendered too
    ]
    sent = {row["recipient_phone"]: row for row in famulor_sandbox.ledger}
    template = sent[PHONE]  # rendered "+49 151 1234 5678", normalized
    match = re.fullmatch(r"Ann (\d{4}-\d{2}-\d{2})", template["recipient_name"])
    assert match, template["recipient_name"]
    ds = match.group(1)
    # template_id rendered "" next to template_name: resolved by name (and language "EN").
    assert (template["sender_id"], template["template_id"], template["kind"]) == (12, 1201, "template")
    assert template["variables"] == {"1": "A-1234"}  # JSON text from the template, sent as a dict
    freeform = sent["+4915112345679"]
    assert (freeform["kind"], freeform["message"]) == ("freeform", f"Order A-1234 ships on {ds}.")
    fallback = sent["+4915112345670"]  # no open window: the templated fallback with its variables
    assert (fallback["kind"], fallback["template_id"], fallback["variables"]) == (
        "template",
        1201,
        {"1": "A-1234"},
    )
    assert len(famulor_sandbox.ledger) == 3
    assert result.xcom("send_template")["message_id"] == template["message_id"]
    lookups = [r for r in famulor_sandbox.requests if r.path == "/api/user/whatsapp/senders/12/templates"]
    assert [r.query for r in lookups] == [{"status": "all"}] * 2  # the listing, and the name lookup
    # Personal data: the task logs name each recipient masked, never in full.
    log = task_log(caplog, capsys)
    for phone in sent:
        assert phone not in log
        assert f"to {mask_phone(phone)} accepted" in log
    assert f"No open 24-hour window with {mask_phone('+4915112345670')}" in log


def test_variables_rendered_as_python_text_are_accepted(run_dag: Any, famulor_sandbox: Any) -> None:
    # Without render_template_as_native_obj, "{{ params.vars }}" renders {'1': 'A-1234'}.
    result = run_dag(OPERATOR_DAGS, "famulor_variables_as_python_text")

    assert result.ti("send_template").state == "success"
    assert [row["variables"] for row in famulor_sandbox.ledger] == [{"1": "A-1234"}]


# -- ListWhatsAppTemplatesOperator -----------------------------------------------------------------


def test_list_templates_filters(famulor_sandbox: Any) -> None:
    all_welcome = ListWhatsAppTemplatesOperator(task_id="l", sender_id="12", names="welcome").execute({})
    assert [(t["name"], t["language"]) for t in all_welcome] == [("welcome", "en"), ("welcome", "de")]
    german = ListWhatsAppTemplatesOperator(task_id="l", sender_id=12, language="de").execute({})
    assert [t["id"] for t in german] == [1203]
    every = ListWhatsAppTemplatesOperator(task_id="l", sender_id=12, status="all").execute({})
    assert {t["status"] for t in every} == {"approved", "pending", "rejected"}
    assert json.loads(json.dumps(every)) == every


# -- SendWhatsAppTemplateOperator: success -----------------------------------------------------------


def test_template_name_resolves_to_the_approved_id(famulor_sandbox: Any) -> None:
    result = template_op(variables={"1": "A-1234"}, recipient_name="Ann").execute({})
    assert result["template_id"] == 1201
    assert result["recipient_phone"] == PHONE
    (row,) = famulor_sandbox.ledger
    assert (row["template_id"], row["recipient_phone"], row["variables"]) == (1201, PHONE, {"1": "A-1234"})
    assert result["message_id"] == row["message_id"]
    assert SANDBOX_API_KEY not in json.dumps(result)


def test_template_id_and_rendered_strings(famulor_sandbox: Any) -> None:
    # What Jinja renders: strings for every field.
    op = template_op(
        sender_id="12", template_id="1203", template_name=None, recipient_phone=" +49 151 1234 5678"
    )
    assert op.execute({})["template_id"] == 1203
    assert famulor_sandbox.ledger[0]["recipient_phone"] == PHONE
    assert not [r for r in famulor_sandbox.requests if r.path.endswith("/templates")]  # no lookup needed


def test_language_picks_among_names(famulor_sandbox: Any) -> None:
    assert template_op(template_name="welcome", language="DE").execute({})["template_id"] == 1203


# -- SendWhatsAppTemplateOperator: failures before any send ------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"template_name": "no_such_template"}, "has no template 'no_such_template'"),
        ({"template_name": "spring_sale"}, "is pending, not approved"),
        ({"template_name": "payment_reminder"}, "is rejected, not approved"),
        ({"template_name": "welcome"}, "approved in de, en; pass language="),
        ({"template_name": "welcome", "language": "fr"}, "in language 'fr'"),
        ({"template_name": None}, "either template_id or template_name"),
        ({"template_id": 1201}, "either template_id or template_name"),
    ],
)
def test_template_resolution_fails_before_any_send(
    famulor_sandbox: Any, kwargs: dict[str, Any], text: str
) -> None:
    with pytest.raises(AirflowFailException, match=text) as err:
        template_op(**kwargs).execute({})
    assert isinstance(err.value.__cause__, FamulorValidationError)
    assert posts(famulor_sandbox) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"recipient_phone": "015112345678"}, "recipient_phone"),
        ({"sender_id": 0}, "sender_id"),
        ({"sender_id": "{{ not rendered }}"}, "sender_id"),
        ({"template_id": -1, "template_name": None}, "template_id"),
        ({"recipient_name": "x" * 256}, "recipient_name"),
        ({"variables": "A-1234"}, "variables"),
    ],
)
def test_invalid_input_fails_without_any_request(
    famulor_sandbox: Any, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(AirflowFailException, match=field) as err:
        template_op(**kwargs).execute({})
    assert "without retry" in str(err.value)
    assert famulor_sandbox.requests == []


# -- SendWhatsAppTemplateOperator: failures of the send ------------------------------------------------


def test_lost_response_fails_without_retry(famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("accept_then_drop", path="/user/whatsapp/send", recipient_phone=PHONE)
    with pytest.raises(AirflowFailException) as err:
        template_op().execute({})
    text = str(err.value)
    assert "Delivery unknown" in text and "may have been sent" in text and "without retry" in text
    assert isinstance(err.value.__cause__, FamulorDeliveryUnknownError)
    assert len(famulor_sandbox.ledger) == 1  # it was sent, once
    assert len(posts(famulor_sandbox)) == 1
    assert SANDBOX_API_KEY not in text


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"fault": "sender_offline"}, FamulorSenderOfflineError),
        ({"fault": "status", "status": 429, "retry_after": 0, "times": 3}, FamulorRateLimitError),
    ],
)
def test_nothing_sent_raises_ordinary_errors_so_retries_apply(
    famulor_sandbox: Any, fault: dict[str, Any], error: type[FamulorError]
) -> None:
    famulor_sandbox.inject(path="/user/whatsapp/send", **fault)
    with pytest.raises(error):
        template_op(template_id=1201, template_name=None).execute({})
    assert famulor_sandbox.ledger == []
    # The next try (what Airflow's retry runs) sends exactly once.
    template_op(template_id=1201, template_name=None).execute({})
    assert len(famulor_sandbox.ledger) == 1


def test_insufficient_balance_fails_without_retry(famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("insufficient_balance")
    with pytest.raises(AirflowFailException, match="INSUFFICIENT_BALANCE") as err:
        template_op().execute({})
    assert isinstance(err.value.__cause__, FamulorInsufficientBalanceError)
    assert famulor_sandbox.ledger == []


def test_sandbox_429_with_retry_after_is_waited_out(famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("status", recipient_phone=PHONE, status=429, retry_after=1)  # sends only
    template_op().execute({})
    assert len(famulor_sandbox.ledger) == 1
    assert [r.status for r in posts(famulor_sandbox)] == [429, 200]


def _refusal(cls: type[FamulorAPIError], status: int) -> FamulorAPIError:
    return cls("refused", status_code=status, error_code="X")


@pytest.mark.parametrize(
    ("error", "final"),
    [
        (FamulorValidationError("recipient_phone", "bad"), True),
        (_refusal(FamulorInsufficientBalanceError, 402), True),
        (_refusal(FamulorTemplateError, 422), True),
        (_refusal(FamulorInvalidPhoneError, 422), True),
        (_refusal(FamulorSessionExpiredError, 403), True),
        (_refusal(FamulorAuthError, 401), True),
        (FamulorDeliveryUnknownError("lost", sender_id=1, recipient_phone=PHONE, attempted_at=None), True),  # type: ignore[arg-type]
        (_refusal(FamulorSenderOfflineError, 422), False),
        (FamulorRateLimitError("429", retry_after=1), False),
        (FamulorConnectionError("refused", request_sent=False), False),
        (_refusal(FamulorAPIError, 422), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_which_failures_fail_without_retry(error: FamulorError, final: bool) -> None:
    with pytest.raises((AirflowFailException, FamulorError)) as err, send_failures(sending=True):
        raise error
    if final:
        assert isinstance(err.value, AirflowFailException)
        assert err.value.__cause__ is error
    else:
        assert err.value is error


def task_log(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    """What the run logged (Airflow 3 logs tasks through structlog to stdout, 2.11 through logging)."""
    captured = capsys.readouterr()
    return caplog.text + captured.out + captured.err


def test_a_send_past_its_execution_timeout_fails_without_retry(
    run_dag: Any,
    famulor_sandbox: Any,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The sandbox bills the message, then holds the answer past the task's 2 s execution_timeout.
    famulor_sandbox.inject("hang", path="/user/whatsapp/send", delay=5, recipient_phone="+4915112345671")
    started = time.monotonic()

    result = run_dag(OPERATOR_DAGS, "famulor_send_timeout")

    ti = result.ti("send_template")
    assert (ti.state, ti.try_number) == ("failed", 1)  # retries=1, yet no second try
    assert time.monotonic() - started < 5  # the timeout ended it, not the sandbox's answer
    assert len(posts(famulor_sandbox)) == 1
    assert len(famulor_sandbox.ledger) == 1  # billed once, never twice
    log = task_log(caplog, capsys)
    assert "Delivery unknown" in log and "may have been sent" in log


def test_a_listing_past_its_execution_timeout_is_retried(run_dag: Any, famulor_sandbox: Any) -> None:
    famulor_sandbox.inject("delay", path="/user/whatsapp/senders", delay=5)

    if AIRFLOW_2:
        # 2.11's dag.test() catches only Exception, and AirflowTaskTimeout is a BaseException
        # there: it escapes the run after try 1 is marked for retry, so the retry is not run.
        with pytest.raises(AirflowTaskTimeout):
            run_dag(OPERATOR_DAGS, "famulor_list_timeout")
        assert latest_ti_state("famulor_list_timeout", "list_senders") == ("up_for_retry", 1)
        assert len(sender_requests(famulor_sandbox)) == 1
        return
    result = run_dag(OPERATOR_DAGS, "famulor_list_timeout")

    ti = result.ti("list_senders")
    assert (ti.state, ti.try_number) == ("success", 2)  # an ordinary failure: the retry ran
    assert [s["id"] for s in ti.return_value] == [12, 15, 21, 27]
    assert len(sender_requests(famulor_sandbox)) == 2


def latest_ti_state(dag_id: str, task_id: str) -> tuple[str, int]:
    """The state and try number of the task's only task instance in the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        [ti] = session.query(TaskInstance).filter_by(dag_id=dag_id, task_id=task_id).all()
        return str(getattr(ti.state, "value", ti.state)), ti.try_number


# -- SendWhatsAppFreeformOperator --------------------------------------------------------------------


def freeform_op(**kwargs: Any) -> SendWhatsAppFreeformOperator:
    args = {"task_id": "ff", "sender_id": 12, "recipient_phone": PHONE, "message": "Your parcel is here."}
    return SendWhatsAppFreeformOperator(**{**args, **kwargs})


def test_freeform_inside_the_window(famulor_sandbox: Any) -> None:
    famulor_sandbox.open_session(12, PHONE, minutes=60)
    result = freeform_op().execute({})
    assert result["template_id"] is None
    (row,) = famulor_sandbox.ledger
    assert (row["kind"], row["message"]) == ("freeform", "Your parcel is here.")


def test_freeform_expired_sends_the_fallback_template(famulor_sandbox: Any) -> None:
    result = freeform_op(fallback_template_id="1201", fallback_variables={"1": "A-9"}).execute({})
    assert result["template_id"] == 1201
    (row,) = famulor_sandbox.ledger
    assert (row["kind"], row["template_id"], row["variables"]) == ("template", 1201, {"1": "A-9"})


def test_freeform_expired_without_fallback_fails_clearly(famulor_sandbox: Any) -> None:
    with pytest.raises(AirflowFailException, match="No open 24-hour window") as err:
        freeform_op().execute({})
    assert "fallback_template_id" in str(err.value)
    assert isinstance(err.value.__cause__, FamulorSessionExpiredError)
    assert famulor_sandbox.ledger == []


def test_freeform_sender_offline_503_is_retryable(famulor_sandbox: Any) -> None:
    famulor_sandbox.open_session(12, PHONE, minutes=60)
    famulor_sandbox.inject("sender_offline", path="/user/whatsapp/send-freeform")
    with pytest.raises(FamulorSenderOfflineError) as err:
        freeform_op().execute({})
    assert err.value.status_code == 503
    assert famulor_sandbox.ledger == []


def test_freeform_validation_before_any_request(famulor_sandbox: Any) -> None:
    with pytest.raises(AirflowFailException, match="message"):
        freeform_op(message="x" * 4097).execute({})
    with pytest.raises(AirflowFailException, match="fallback_template_id"):
        freeform_op(fallback_template_id=0).execute({})
    assert famulor_sandbox.requests == []


def test_freeform_lost_response_fails_without_retry(famulor_sandbox: Any) -> None:
    famulor_sandbox.open_session(12, PHONE, minutes=60)
    famulor_sandbox.inject("accept_then_drop", path="/user/whatsapp/send-freeform")
    with pytest.raises(AirflowFailException, match="Delivery unknown"):
        freeform_op(fallback_template_id=1201).execute({})
    assert len(famulor_sandbox.ledger) == 1  # and no fallback after an unknown outcome
