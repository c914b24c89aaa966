"""End to end: the famulor_whatsapp_per_recipient example DAG through dag.test() against the sandbox.

With faults on some recipients and retries=2, nobody is messaged twice, a lost answer fails its
task without retry, and everything else is sent. The template's name is resolved once per run.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from famulor_provider.operators.whatsapp import SendWhatsAppTemplateOperator
from famulor_provider.privacy import mask_phone
from famulor_provider.testing import SANDBOX_API_KEY, FamulorSandbox

DAG_FILE = "example_dags/famulor_whatsapp_per_recipient.py"
DAG_ID = "famulor_whatsapp_per_recipient"

LOST = "+14155550001"  # accepted, then the connection drops: the message was sent
DROPPED = "+14155550002"  # the connection drops before the API handles it: not sent
RATE_LIMITED = "+14155550003"  # one 429: the hook waits Retry-After and sends
THROTTLED = "+14155550004"  # 429 on every hook attempt: the task fails, Airflow retries
OFFLINE = "+14155550005"  # sender offline once: the task fails, Airflow retries
PLAIN = ["+14155550006", "+14155550007", "+442079460108"]


def template_lookups(sandbox: FamulorSandbox) -> list[str]:
    """The GETs of a sender's templates the sandbox received."""
    return [r.path for r in sandbox.requests if r.method == "GET" and r.path.endswith("/templates")]


@pytest.fixture
def sandbox() -> Iterator[FamulorSandbox]:
    with FamulorSandbox(send_rate_limit=5) as sb:
        yield sb


@pytest.fixture
def failures(monkeypatch: pytest.MonkeyPatch) -> dict[str, BaseException]:
    """What each send task raised, by recipient (the DAG runs in this process)."""
    raised: dict[str, BaseException] = {}
    execute = SendWhatsAppTemplateOperator.execute

    def recording_execute(self: SendWhatsAppTemplateOperator, context: Any) -> Any:
        try:
            return execute(self, context)
        except BaseException as err:
            raised[str(self.recipient_phone)] = err
            raise

    monkeypatch.setattr(SendWhatsAppTemplateOperator, "execute", recording_execute)
    return raised


def test_campaign_never_sends_twice(
    run_dag: Callable[..., Any], sandbox: FamulorSandbox, failures: dict[str, BaseException]
) -> None:
    phones = [LOST, DROPPED, RATE_LIMITED, THROTTLED, OFFLINE, *PLAIN]
    recipients = [
        {"recipient_phone": phone, "recipient_name": f"R{i}", "variables": {"1": f"A-{i}"}}
        for i, phone in enumerate(phones)
    ]
    recipients.append({"recipient_phone": "+1 415 555 0006", "variables": {"1": "again"}})  # listed twice
    sandbox.inject("accept_then_drop", recipient_phone=LOST)
    sandbox.inject("drop", recipient_phone=DROPPED)
    sandbox.inject("status", status=429, retry_after=1, recipient_phone=RATE_LIMITED)
    # The sandbox connection allows 2 hook retries: 3 answers of 429 exhaust one task try.
    sandbox.inject("status", status=429, retry_after=0, times=3, recipient_phone=THROTTLED)
    sandbox.inject("sender_offline", recipient_phone=OFFLINE)

    result = run_dag(
        DAG_FILE,
        DAG_ID,
        conf={"template_name": "order_update", "language": "en", "recipients": recipients},
        env=sandbox.env(),
    )

    # Nobody got a message twice; everybody but the dropped request got one.
    ledger = sandbox.ledger
    counts = Counter(row["recipient_phone"] for row in ledger)
    assert max(counts.values()) == 1
    assert set(counts) == set(phones) - {DROPPED}
    assert {row["template_id"] for row in ledger} == {1501}  # order_update of the best sender (15)

    sends = {
        ti.return_value["recipient_phone"]: ti for ti in result.mapped("send_template") if ti.return_value
    }
    by_index = {recipients[ti.map_index]["recipient_phone"]: ti for ti in result.mapped("send_template")}
    assert len(by_index) == len(phones)  # the duplicate entry got no task of its own

    # Lost answers: failed on the first try, without retry, saying the message may have been sent.
    for phone in (LOST, DROPPED):
        ti = by_index[phone]
        assert (ti.state, ti.try_number) == ("failed", 1)
        text = str(failures[phone])
        assert "Delivery unknown" in text and "may have been sent" in text and "without retry" in text
        assert mask_phone(phone) in text and phone not in text and "UTC" in text

    # Nothing sent, so Airflow's retry ran and sent exactly once.
    for phone in (THROTTLED, OFFLINE):
        assert (by_index[phone].state, by_index[phone].try_number) == ("success", 2)
    for phone in (RATE_LIMITED, *PLAIN):
        assert (by_index[phone].state, by_index[phone].try_number) == ("success", 1)

    # Each success returned the message the API accepted.
    accepted = {row["recipient_phone"]: row["message_id"] for row in ledger}
    assert {phone: ti.return_value["message_id"] for phone, ti in sends.items()} == {
        phone: accepted[phone] for phone in sends
    }

    # The report names who got which id and fails the run for the two without one.
    assert result.ti("report").state == "failed"
    assert result.state == "failed"

    # The template's name was looked up once for the run, not once per recipient or try.
    assert template_lookups(sandbox) == ["/api/user/whatsapp/senders/15/templates"]
    assert result.xcom("resolve_template") == 1501

    # At most 5 sends per second, measured where the API sees them.
    times = sorted(row["accepted_at"] for row in ledger)
    assert times[-1] - times[0] >= (len(times) - 1) / 5

    # The key is nowhere in XCom or the errors.
    everything = json.dumps([ti.xcom for ti in result.task_instances], default=str)
    everything += " ".join(str(err) for err in failures.values())
    assert SANDBOX_API_KEY not in everything


def test_campaign_all_sent(run_dag: Callable[..., Any], sandbox: FamulorSandbox) -> None:
    result = run_dag(DAG_FILE, DAG_ID, env=sandbox.env())
    assert result.state == "success"
    assert result.xcom("pick_sender") == 15
    assert result.xcom("report") == {"recipients": 3, "sent": 3}  # counts, not phone numbers
    assert len(sandbox.ledger) == 3
    assert len(template_lookups(sandbox)) == 1


def example_module() -> Any:
    spec = importlib.util.spec_from_file_location("per_recipient_example", DAG_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_list_past_max_map_length_fails_where_it_is_produced(
    run_dag: Callable[..., Any], sandbox: FamulorSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipients = [{"recipient_phone": f"+1415555{n:04d}"} for n in range(5)]
    env = {**sandbox.env(), "AIRFLOW__CORE__MAX_MAP_LENGTH": "4"}  # read at run time

    result = run_dag(
        DAG_FILE,
        DAG_ID,
        conf={"template_name": "order_update", "language": "en", "recipients": recipients},
        env=env,
    )

    assert result.ti("recipients").state == "failed"
    assert result.mapped("send_template") == [] or all(
        ti.state != "success" for ti in result.mapped("send_template")
    )
    assert [r for r in sandbox.requests if r.method == "POST"] == []
    assert result.ti("report").state == "failed" and result.state == "failed"

    # The message names the limit, the setting and the way out.
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "4")
    check_map_length = example_module().check_map_length
    check_map_length(4)
    with pytest.raises(ValueError, match=r"5 recipients, but a mapped task may have at most 4") as err:
        check_map_length(5)
    assert "[core] max_map_length = 4" in str(err.value)
    assert "SendWhatsAppCampaignOperator" in str(err.value)
    monkeypatch.delenv("AIRFLOW__CORE__MAX_MAP_LENGTH")
    check_map_length(1024)
    with pytest.raises(ValueError, match="at most 1024 instances"):
        check_map_length(1100)
