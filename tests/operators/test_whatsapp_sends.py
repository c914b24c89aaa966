"""Template and send operators against the sandbox: one message per task, and no retry sends twice."""

from __future__ import annotations

import json
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowTaskTimeout

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
from famulor_provider.testing import SANDBOX_API_KEY

PHONE = "+4915112345678"


def posts(sandbox: Any) -> list[Any]:
    return [r for r in sandbox.requests if r.method == "POST"]


def template_op(**kwargs: Any) -> SendWhatsAppTemplateOperator:
    args = {"task_id": "send", "sender_id": 12, "recipient_phone": PHONE, "template_name": "order_update"}
    return SendWhatsAppTemplateOperator(**{**args, **kwargs})


# -- construction ----------------------------------------------------------------------------------


def test_constructors_store_arguments_and_do_no_io() -> None:
    op = template_op(variables={"1": "{{ ds }}"}, famulor_conn_id="nope")
    assert "hook" not in op.__dict__  # built lazily, on the worker
    assert set(op.template_fields) == {
        "sender_id",
        "recipient_phone",
        "template_id",
        "template_name",
        "language",
        "variables",
        "recipient_name",
        "famulor_conn_id",
    }
    freeform = SendWhatsAppFreeformOperator(task_id="f", sender_id=12, recipient_phone=PHONE, message="hi")
    assert set(freeform.template_fields) == {
        "sender_id",
        "recipient_phone",
        "message",
        "fallback_template_id",
        "fallback_variables",
        "famulor_conn_id",
    }
    listing = ListWhatsAppTemplatesOperator(task_id="l", sender_id="{{ params.sender }}")
    assert set(listing.template_fields) == {"sender_id", "status", "names", "language", "famulor_conn_id"}
    for operator in (op, freeform, listing):
        for name in operator.template_fields:
            getattr(operator, name)  # assigned unchanged, under the same name


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


def test_task_timeout_during_a_send_fails_without_retry(
    famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = template_op(template_id=1201, template_name=None)

    def time_out(*args: Any, **kwargs: Any) -> None:
        raise AirflowTaskTimeout("Timeout")

    monkeypatch.setattr(op.hook, "send_whatsapp_template", time_out)
    with pytest.raises(AirflowFailException, match="timed out while a WhatsApp message was being sent"):
        op.execute({})
    with pytest.raises(AirflowTaskTimeout), send_failures():  # outside a send: Airflow decides
        raise AirflowTaskTimeout("Timeout")


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
