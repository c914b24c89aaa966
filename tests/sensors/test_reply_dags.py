"""End to end with ``dag.test()``: the reply sensor in poke, reschedule and deferrable mode (the
trigger runs inline) against the sandbox over real HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from famulor_fixtures import set_sandbox_conn

from famulor_provider.exceptions import FamulorValidationError
from famulor_provider.sensors.whatsapp import WhatsAppReplySensor
from famulor_provider.triggers import whatsapp as trigger_module

DAGS = Path(__file__).parent / "dags" / "famulor_reply_modes.py"
SENDER = "+14155551234"  # sender 12
PHONE = "+4915112345678"
LIST_PATH = "/api/user/conversations"
MODES = ["poke", "reschedule", "deferrable"]
PAST = [{"role": "user", "content": "YES"}, {"role": "assistant", "content": "Your table is booked."}]


@pytest.fixture(autouse=True)
def fast_polling(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Poll as fast as the tests need: the default budget (50 requests/min) would pace them."""
    set_sandbox_conn(
        monkeypatch, famulor_sandbox, extra={"timeout": 5, "max_retries": 2, "poll_requests_per_minute": 6000}
    )


@pytest.fixture
def trigger_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Recipients of the reply triggers that ran (proves the deferrable path really deferred)."""
    runs: list[str] = []
    real = trigger_module.WhatsAppReplyTrigger.run

    def spy(self: Any) -> Any:
        runs.append(self.recipient_phone)
        return real(self)

    monkeypatch.setattr(trigger_module.WhatsAppReplyTrigger, "run", spy)
    return runs


@pytest.fixture
def trigger_events(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every event the reply triggers fired, as Airflow got them."""
    events: list[Any] = []
    real = trigger_module.WhatsAppReplyTrigger.run

    async def spy(self: Any) -> Any:
        async for event in real(self):
            events.append(event)
            yield event

    monkeypatch.setattr(trigger_module.WhatsAppReplyTrigger, "run", spy)
    return events


@pytest.fixture
def customer_writes_later(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``customer_writes_later(text)``: the customer writes ``text`` 0.5 s after the sensor (or its
    trigger) first knows where replies begin, whatever the time the DAG run took to get there."""
    from famulor_provider.conversations.replies import ReplyProgress

    texts: list[str] = []
    real = ReplyProgress.needs_read

    def spy(self: ReplyProgress, conversation: Any, *, exact: bool) -> bool:
        needs = real(self, conversation, exact=exact)
        if texts and self.watch.baseline is not None:
            famulor_sandbox.schedule_receive(0.5, SENDER, PHONE, texts.pop(0))
        return needs

    monkeypatch.setattr(ReplyProgress, "needs_read", spy)
    return texts.append


def conversation(sandbox: Any) -> dict[str, Any]:
    (found,) = [c for c in sandbox.conversations if c["customer"]["phone"] == PHONE]
    return found


@pytest.mark.parametrize("mode", MODES)
def test_a_reply_before_the_first_poke_counts_and_history_before_the_send_does_not(
    run_dag: Any, famulor_sandbox: Any, trigger_runs: list[str], mode: str
) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=PAST)  # an old "YES" must not count
    replies = [{"text": "Yes, but later", "assistant_reply": "Please answer YES or NO"}, {"text": " no! "}]

    result = run_dag(DAGS, f"reply_{mode}", conf={"replies": replies})

    assert result.states == {
        "ask": "success",
        "customer": "success",
        "reply": "success",
        "use_reply": "success",
        "timeout": "failed",  # AirflowSensorTimeout on every Airflow line, deferred or not
        "soft_timeout": "skipped",
    }
    sent = result.xcom("ask")
    history = conversation(famulor_sandbox)["history"]
    assert [m["role"] for m in history] == ["user", "assistant", "assistant", "user", "assistant", "user"]
    assert sent["history_length_after_send"] == 3  # the past 2 and the template itself
    assert sent["history_lengths_after_send"] == {SENDER: 3}
    assert sent["conversation_uuid"] == conversation(famulor_sandbox)["id"]
    assert result.xcom("reply") == {
        "conversation_id": conversation(famulor_sandbox)["id"],
        "sender_phone": SENDER,
        "recipient_phone": PHONE,
        "text": " no! ",
        "choice": "NO",
        "message_index": 5,
        "replies": ["Yes, but later", " no! "],  # the assistant's answer in between never counts
    }
    assert result.xcom("use_reply") == "NO"
    assert bool(trigger_runs) is (mode == "deferrable")


def test_the_triggerer_sees_neither_the_customers_number_nor_their_words(
    run_dag: Any, famulor_sandbox: Any, trigger_events: list[Any]
) -> None:
    try:
        from airflow.sdk.serde import serialize
    except ImportError:  # Airflow 2.11
        from airflow.serialization.serde import serialize
    famulor_sandbox.add_conversation(SENDER, PHONE, history=PAST)
    replies = [{"text": "Maybe later", "assistant_reply": "Please answer YES or NO"}, {"text": "*No* 🙏🏽"}]

    result = run_dag(DAGS, "reply_deferrable", conf={"replies": replies})

    uuid = conversation(famulor_sandbox)["id"]
    assert result.xcom("reply") == {  # what the sensor returned before: built on the worker now
        "conversation_id": uuid,
        "sender_phone": SENDER,
        "recipient_phone": PHONE,
        "text": "*No* 🙏🏽",
        "choice": "NO",
        "message_index": 5,
        "replies": ["Maybe later", "*No* 🙏🏽"],
    }
    # The reply sensor and the two that time out: what the triggerer logs and stores of each event.
    assert [e.payload["status"] for e in trigger_events] == ["success", "timeout", "timeout"]
    assert trigger_events[0].payload == {
        "status": "success",
        "conversation_id": uuid,
        "sender_phone": SENDER,
        "baseline": 3,
        "message_index": 5,
        "history_length": 6,
    }
    for event in trigger_events:
        logged = repr(event) + json.dumps(serialize(event.payload))
        assert PHONE.removeprefix("+") not in logged and "****" not in logged
        assert "Maybe" not in logged and "No" not in logged


@pytest.mark.famulor_sandbox(sends_in_history=False)
@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_a_reply_that_comes_later_is_waited_for_when_sends_are_not_in_history(
    run_dag: Any, famulor_sandbox: Any, customer_writes_later: Any, mode: str
) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=PAST)
    customer_writes_later("yes.")

    result = run_dag(DAGS, f"reply_{mode}", conf={"replies": []})

    assert result.states["reply"] == "success"
    assert result.xcom("ask")["history_length_after_send"] == 2
    reply = result.xcom("reply")
    assert (reply["text"], reply["choice"], reply["message_index"], reply["replies"]) == (
        "yes.",
        "YES",
        2,
        ["yes."],
    )


@pytest.mark.parametrize("mode", MODES)
def test_when_the_read_after_the_send_fails_replies_after_the_first_read_count(
    run_dag: Any, famulor_sandbox: Any, customer_writes_later: Any, mode: str
) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=PAST)
    famulor_sandbox.inject("status", path="/user/conversations", status=429, retry_after=30)
    customer_writes_later("No")

    result = run_dag(DAGS, f"reply_{mode}", conf={"replies": []})

    sent = result.xcom("ask")
    assert result.ti("ask").state == "success"  # the send succeeds: its read failed once, no retry
    assert (sent["history_lengths_after_send"], sent["history_length_after_send"]) == (None, None)
    reply = result.xcom("reply")
    assert (reply["choice"], reply["message_index"], reply["replies"]) == ("NO", 3, ["No"])


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_without_after_a_conversation_that_does_not_exist_yet_is_waited_for(
    run_dag: Any, famulor_sandbox: Any, customer_writes_later: Any, mode: str
) -> None:
    customer_writes_later("Hello?")

    result = run_dag(DAGS, f"reply_without_after_{mode}")

    assert result.states == {"reply": "success"}
    reply = result.xcom("reply")
    assert (reply["text"], reply["choice"], reply["message_index"]) == ("Hello?", None, 0)


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_without_after_messages_before_the_sensor_started_do_not_count(
    run_dag: Any, famulor_sandbox: Any, customer_writes_later: Any, mode: str
) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=PAST)
    customer_writes_later("Second thoughts")

    result = run_dag(DAGS, f"reply_without_after_{mode}")

    reply = result.xcom("reply")
    assert (reply["text"], reply["message_index"], reply["replies"]) == (
        "Second thoughts",
        2,
        ["Second thoughts"],
    )


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_transient_faults_are_waited_past(
    run_dag: Any, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch, customer_writes_later: Any, mode: str
) -> None:
    extra = {"timeout": 5, "max_retries": 0, "poll_requests_per_minute": 6000}
    set_sandbox_conn(monkeypatch, famulor_sandbox, extra=extra)
    famulor_sandbox.add_conversation(SENDER, PHONE, history=PAST)
    famulor_sandbox.inject("status", path="/user/conversations", status=503, times=3)
    customer_writes_later("YES")

    result = run_dag(DAGS, f"reply_without_after_{mode}")

    assert result.states == {"reply": "success"}
    assert result.xcom("reply")["text"] == "YES"


def test_a_failed_sender_look_up_in_the_triggerer_does_not_blind_the_sensor(
    run_dag: Any, famulor_sandbox: Any, trigger_runs: list[str]
) -> None:
    famulor_sandbox.add_conversation(SENDER, PHONE, history=PAST)
    # Deferred with after=, the worker makes no request: the trigger's first sender look-up fails.
    famulor_sandbox.inject("status", path="/user/whatsapp/senders", status=503)
    started = time.monotonic()

    result = run_dag(DAGS, "reply_deferrable", conf={"replies": [{"text": "yes"}]})

    assert result.states["reply"] == "success"
    assert time.monotonic() - started < 25  # not the sensor's 30 s timeout
    reply = result.xcom("reply")
    assert (reply["text"], reply["choice"], reply["message_index"]) == ("yes", "YES", 3)
    senders = [r for r in famulor_sandbox.requests if r.path == "/api/user/whatsapp/senders"]
    assert [r.status for r in senders][:2] == [503, 200]
    assert trigger_runs[0] == PHONE


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_a_bad_key_fails_at_once(run_dag: Any, famulor_sandbox: Any, wrong_key: None, mode: str) -> None:
    started = time.monotonic()
    result = run_dag(DAGS, f"reply_without_after_{mode}")
    assert result.states == {"reply": "failed"}
    assert time.monotonic() - started < 20  # not the sensor's 30 s timeout


def test_an_unknown_sender_id_fails_at_once(
    run_dag: Any, famulor_sandbox: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    result = run_dag(DAGS, "reply_unknown_sender")
    assert result.states == {"reply": "failed"}
    assert time.monotonic() - started < 20
    captured = capsys.readouterr()
    assert "sender_id 99 not found" in caplog.text + captured.out + captured.err


def test_reschedule_mode_needs_after() -> None:
    with pytest.raises(FamulorValidationError, match="mode='reschedule' needs after=") as err:
        WhatsAppReplySensor(task_id="reply", sender_id=12, recipient_phone=PHONE, mode="reschedule")
    assert err.value.field == "after"
    assert "Airflow clears a task's XCom at each reschedule" in str(err.value)


EXAMPLE_DAG = Path(__file__).resolve().parents[2] / "example_dags" / "famulor_whatsapp_confirmation.py"


@pytest.mark.parametrize(
    ("answer", "branch", "skipped"),
    [
        (" Yes! ", "confirmed", "declined"),
        ("*Yes* 👍🏽", "confirmed", "declined"),
        ("no", "declined", "confirmed"),
    ],
)
def test_the_confirmation_example_branches_on_the_answer(
    run_dag: Any,
    famulor_sandbox: Any,
    monkeypatch: pytest.MonkeyPatch,
    trigger_runs: list[str],
    answer: str,
    branch: str,
    skipped: str,
) -> None:
    monkeypatch.setenv("FAMULOR_EXAMPLE_POKE_INTERVAL", "0.2")
    famulor_sandbox.customer_reply = (answer, 2.0)

    result = run_dag(EXAMPLE_DAG, "famulor_whatsapp_confirmation")

    assert result.states == {
        "ask": "success",
        "answer": "success",
        "decide": "success",
        branch: "success",
        skipped: "skipped",
    }
    assert result.xcom("answer")["text"] == answer
    assert result.xcom(branch).startswith(f"{branch} by the customer ({answer!r})")
    assert trigger_runs == [PHONE]
