"""WhatsAppNotifier: rendering, one message per recipient, failures and fallbacks, sync and async,
and real DAG runs (``dag.test()``) whose callbacks send through the sandbox over HTTP."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG

from famulor_provider.exceptions import FamulorError, FamulorValidationError
from famulor_provider.get_provider_info import get_provider_info
from famulor_provider.notifications.claims import AlertClaims
from famulor_provider.notifications.whatsapp import WhatsAppNotifier, send_whatsapp_notification
from famulor_provider.pacing import SEND_INTERVAL, SendPacer
from famulor_provider.privacy import mask_phone

AIRFLOW_2 = importlib.metadata.version("apache-airflow").startswith("2.")
DAGS = Path(__file__).parent / "dags" / "famulor_notifier_dags.py"
EXAMPLE_DAG = Path(__file__).resolve().parents[2] / "example_dags" / "famulor_alert_on_failure.py"
SECRET = "sandbox-key-never-logged-7f3a"
A, B, C = "+14155550101", "+14155550102", "+14155550103"
TEMPLATES_PATH = "/api/user/whatsapp/senders/12/templates"

pytestmark = pytest.mark.famulor_sandbox(api_key=SECRET)  # with the API's 5 sends/s limit


def context(task_id: str = "load", **params: Any) -> dict[str, Any]:
    dag = DAG(dag_id="etl", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
    return {"dag": dag, "ti": SimpleNamespace(task_id=task_id), "params": params}


def notifier(**kwargs: Any) -> WhatsAppNotifier:
    kwargs = {"sender_id": 12, "template_id": 1201, "variables": {"1": "{{ ti.task_id }}"}, **kwargs}
    return send_whatsapp_notification(**kwargs)


def run(alert: WhatsAppNotifier, mode: str, ctx: dict[str, Any] | None = None) -> None:
    """Render, then notify the way Airflow does: ``notify`` or, on 3.1+ deadlines, ``async_notify``."""
    ctx = ctx or context()
    alert.render_template_fields(ctx)
    if mode == "sync":
        alert.notify(ctx)
    else:
        asyncio.run(alert.async_notify(ctx))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Any:
    """Everything logged so far: stdlib logging, and Airflow 3's structlog output on stdout/stderr."""

    def text() -> str:
        out, err = capfd.readouterr()
        return caplog.text + out + err

    return text


def messages(sandbox: Any) -> dict[str, dict[str, Any]]:
    """The sandbox's ledger by recipient; fails if anybody got two messages."""
    counts = Counter(m["recipient_phone"] for m in sandbox.ledger)
    assert all(n == 1 for n in counts.values()), counts
    return {m["recipient_phone"]: m for m in sandbox.ledger}


# -- rendering -------------------------------------------------------------------------------------


def test_every_field_renders_from_the_callback_context() -> None:
    alert = send_whatsapp_notification(
        sender_id="{{ params.sender }}",
        recipients="{{ params.phones }}",
        template_id="{{ params.template_id }}",
        template_name="{{ params.name }}",
        language="{{ params.language }}",
        variables={"1": "{{ dag.dag_id }}/{{ ti.task_id }}"},
        message="{{ ti.task_id }} failed",
        famulor_conn_id="{{ params.conn }}",
    )
    ctx = context(sender=12, phones=[A, B], template_id=1201, name="order_update", language="en", conn="fam")

    alert.render_template_fields(ctx)

    assert (alert.sender_id, alert.recipients, alert.template_id) == ("12", str([A, B]), "1201")
    assert (alert.template_name, alert.language, alert.famulor_conn_id) == ("order_update", "en", "fam")
    assert alert.variables == {"1": "etl/load"}
    assert alert.message == "load failed"
    assert alert._arguments() == (12, [A, B], {"1": "etl/load"}, "load failed")


def test_one_notifier_renders_each_callback_afresh() -> None:
    alert = notifier(recipients=A, famulor_conn_id="{{ params.conn }}")
    alert.render_template_fields(context("extract", conn="first"))
    first_hook = alert.hook

    alert.render_template_fields(context("load", conn="second"))

    assert alert.variables == {"1": "load"}
    assert alert.hook is not first_hook and alert.hook.famulor_conn_id == "second"


@pytest.mark.parametrize(
    "recipients",
    [
        f"{A}, +1 (415) 555-0102,{A}",
        json.dumps([A, "+1 415 555 0102", A]),
        [A, "+1.415.555.0102", A],
    ],
)
def test_recipients_are_read_from_text_or_lists_and_deduplicated(recipients: Any) -> None:
    assert notifier(recipients=recipients)._arguments()[1] == [A, B]


def test_no_recipients_is_an_error() -> None:
    with pytest.raises(FamulorValidationError, match="recipients"):
        notifier(recipients="  ")._arguments()


# -- sending against the sandbox -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_recipient_gets_one_message_and_the_name_is_resolved_once(
    famulor_sandbox: Any, mode: str, logs: Any
) -> None:
    alert = notifier(recipients=[A, B, C, B], template_id=None, template_name="order_update", language="en")

    run(alert, mode)

    sent = messages(famulor_sandbox)
    assert sorted(sent) == [A, B, C]
    assert {m["template_id"] for m in sent.values()} == {1201}
    assert {json.dumps(m["variables"]) for m in sent.values()} == {'{"1": "load"}'}
    assert [r.path for r in famulor_sandbox.requests].count(TEMPLATES_PATH) == 1
    logged = logs()
    assert f"sent to all 3 recipient(s): {[mask_phone(p) for p in (A, B, C)]}" in logged
    assert SECRET not in logged
    assert A not in logged and B not in logged and C not in logged  # INFO lines mask the numbers


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_failing_recipients_are_reported_and_the_others_are_messaged(
    famulor_sandbox: Any, mode: str, logs: Any
) -> None:
    lost = "+14155550104"
    famulor_sandbox.inject("invalid_phone", recipient_phone=B)
    famulor_sandbox.inject("sender_offline", recipient_phone=C)
    famulor_sandbox.inject("accept_then_drop", recipient_phone=lost)  # sent, but the answer is lost

    with pytest.raises(FamulorError) as raised:
        run(notifier(recipients=[A, B, "12345", C, lost, "+14155550105"]), mode)

    assert sorted(messages(famulor_sandbox)) == sorted([A, lost, "+14155550105"])
    error = str(raised.value)
    not_sent = [mask_phone(p) for p in (B, "12345", C, lost)]
    assert f"failed for 4 of 6 recipient(s) {not_sent}" in error
    assert "INVALID_PHONE" in error or "Invalid phone" in error
    assert "Delivery unknown" in error  # never retried: the ledger holds exactly one message
    logged = logs()
    assert f"sent to 2 of 6 recipient(s): {[mask_phone(A), mask_phone('+14155550105')]}" in logged
    assert SECRET not in error and SECRET not in logged
    assert not [p for p in (A, B, C, lost) if p in logged or p in error]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_free_form_text_where_the_window_is_open_else_the_template(famulor_sandbox: Any, mode: str) -> None:
    famulor_sandbox.open_session(12, A)

    run(notifier(recipients=[A, B], message="{{ ti.task_id }} failed"), mode)

    sent = messages(famulor_sandbox)
    assert (sent[A]["kind"], sent[A]["message"]) == ("freeform", "load failed")
    assert (sent[B]["kind"], sent[B]["template_id"], sent[B]["variables"]) == (
        "template",
        1201,
        {"1": "load"},
    )


def deadline_trigger() -> Any:
    """The class a 3.1+ triggerer runs a deadline alert's async callback with."""
    try:
        from airflow.triggers.callback import CallbackTrigger  # Airflow 3.2+

        return CallbackTrigger
    except ImportError:
        from airflow.triggers.deadline import DeadlineCallbackTrigger  # Airflow 3.1

        return DeadlineCallbackTrigger


@pytest.mark.skipif(AIRFLOW_2, reason="deadline alerts (async callbacks) are Airflow 3.1+")
def test_a_deadline_alert_callback_sends_through_the_triggerer_path(famulor_sandbox: Any) -> None:
    try:
        from airflow.sdk.definitions.callback import AsyncCallback
    except ImportError:
        from airflow.sdk.definitions.deadline import AsyncCallback  # type: ignore[no-redef]
    kwargs = {"sender_id": 12, "recipients": [A, B], "template_name": "order_update"}
    kwargs["variables"] = {"1": "{{ dag_run.dag_id }} missed its deadline"}
    AsyncCallback(WhatsAppNotifier, kwargs=kwargs)  # accepted: the notifier is awaitable
    trigger = deadline_trigger()(
        callback_path="famulor_provider.notifications.whatsapp.WhatsAppNotifier",
        callback_kwargs={**kwargs, "context": {"dag_run": {"dag_id": "etl"}}},
    )

    async def run_trigger() -> list[Any]:
        return [event.payload async for event in trigger.run()]

    events = asyncio.run(run_trigger())

    assert str(events[-1]["state"]).lower().endswith("success"), events
    assert {m["variables"]["1"] for m in messages(famulor_sandbox).values()} == {"etl missed its deadline"}
    assert sorted(messages(famulor_sandbox)) == [A, B]


# -- 429 storms and alert floods --------------------------------------------------------------------

SEND_PATH = "/user/whatsapp/send"


class FakeTime:
    """A clock that moves only when the notifier or its hook sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def notify_on_fake_time(alert: WhatsAppNotifier, mode: str, fake: FakeTime) -> None:
    ctx = context()
    alert.render_template_fields(ctx)
    alert.clock = fake.clock  # type: ignore[method-assign]
    alert.hook.sleep = fake.sleep  # type: ignore[method-assign]
    alert.hook.async_sleep = fake.async_sleep  # type: ignore[method-assign]
    alert.hook.send_pacer = SendPacer(SEND_INTERVAL, clock=fake.clock)
    if mode == "sync":
        alert.notify(ctx)
    else:
        asyncio.run(alert.async_notify(ctx))


def posts(sandbox: Any) -> int:
    return sum(1 for r in sandbox.requests if r.method == "POST")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_alert_outlasts_more_429s_than_the_hook_retries(famulor_sandbox: Any, mode: str) -> None:
    # The sandbox connection allows 2 retries: 3 tries. Five 429s in a row used to lose the alert.
    famulor_sandbox.inject("status", path=SEND_PATH, status=429, retry_after=120, times=5)
    fake = FakeTime()

    notify_on_fake_time(notifier(recipients=A), mode, fake)

    assert sorted(messages(famulor_sandbox)) == [A]
    assert posts(famulor_sandbox) == 6
    assert all(wait <= 61 for wait in fake.sleeps), fake.sleeps  # Retry-After capped at 60 s (+ jitter)
    assert 299 < fake.now < 301  # five waits of 60 s and the notifier's jitter (< 1 s)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_patience_bounds_how_long_429s_are_retried(famulor_sandbox: Any, mode: str, logs: Any) -> None:
    famulor_sandbox.inject("status", path=SEND_PATH, status=429, retry_after=120, times=100)
    fake = FakeTime()

    with pytest.raises(FamulorError) as raised:
        notify_on_fake_time(notifier(recipients=A, rate_limit_patience=200), mode, fake)

    # Round 1: 3 tries (t = 120); wait 60 (t = 180); round 2: 3 tries (t = 300); past 200: give up.
    assert posts(famulor_sandbox) == 6 and famulor_sandbox.ledger == []
    assert 300 < fake.now < 302
    assert f"failed for 1 of 1 recipient(s) ['{mask_phone(A)}']" in str(raised.value)
    assert "429" in str(raised.value)
    assert "(rate_limit_patience)" in logs()


@pytest.mark.parametrize("patience", [-1, "soon", None])
def test_a_bad_patience_is_an_error_naming_the_argument(patience: Any) -> None:
    with pytest.raises(FamulorValidationError, match="rate_limit_patience"):
        run(notifier(recipients=A, rate_limit_patience=patience), "sync")


def fire_together(alerts: list[tuple[WhatsAppNotifier, dict[str, Any]]]) -> list[Exception]:
    """Run every callback at once, each in its own thread with its own pacer (as worker processes)."""
    barrier = threading.Barrier(len(alerts))
    errors: list[Exception] = []

    def fire(alert: WhatsAppNotifier, ctx: dict[str, Any]) -> None:
        barrier.wait()
        try:
            alert.notify(ctx)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=fire, args=pair) for pair in alerts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return errors


def failing_tasks(n: int, run_id: str | None = None, **kwargs: Any) -> list[tuple[WhatsAppNotifier, dict]]:
    alerts = []
    for i in range(n):
        alert = notifier(recipients=[A, B], **kwargs)
        ctx = context(f"task_{i:02d}")
        if run_id:
            ctx["run_id"] = run_id
            ctx["dag_run"] = SimpleNamespace(dag_id="etl", run_id=run_id)
        alert.render_template_fields(ctx)
        alert.hook.send_pacer = SendPacer(SEND_INTERVAL)  # each task in its own worker process
        alerts.append((alert, ctx))
    return alerts


def test_twenty_tasks_failing_together_lose_no_alert_to_a_429_storm(famulor_sandbox: Any) -> None:
    # 20 callbacks x 2 on-call numbers at once against the 5 sends/s limit, and ten more 429s
    # (Retry-After: 3) injected on top: every alert goes out, each exactly once.
    famulor_sandbox.inject("status", path=SEND_PATH, status=429, retry_after=3, times=10)
    started = time.monotonic()

    errors = fire_together(failing_tasks(20))

    elapsed = time.monotonic() - started
    assert errors == []
    sent = Counter((m["recipient_phone"], m["variables"]["1"]) for m in famulor_sandbox.ledger)
    assert sent == {(phone, f"task_{i:02d}"): 1 for i in range(20) for phone in (A, B)}
    total = posts(famulor_sandbox)
    print(f"\n40 alerts in {elapsed:.1f} s, {total} POSTs ({total - 40} answered 429)")


def test_once_per_dag_run_sends_each_recipient_one_message_from_twenty_callbacks(
    famulor_sandbox: Any, tmp_path: Path
) -> None:
    errors = fire_together(failing_tasks(20, "run_1", once_per_dag_run=True, claims_folder=str(tmp_path)))
    errors += fire_together(failing_tasks(20, "run_2", once_per_dag_run=True, claims_folder=str(tmp_path)))

    assert errors == []
    by_phone = Counter(m["recipient_phone"] for m in famulor_sandbox.ledger)
    assert by_phone == {A: 2, B: 2}  # one per recipient per run
    assert len(list(tmp_path.glob("etl/*/*"))) == 4


def test_a_claim_is_given_back_only_when_nothing_was_sent(famulor_sandbox: Any, tmp_path: Path) -> None:
    famulor_sandbox.inject("invalid_phone", path=SEND_PATH, recipient_phone=B)  # refused: not sent
    famulor_sandbox.inject("accept_then_drop", path=SEND_PATH, recipient_phone=A)  # sent, answer lost
    [(first, ctx1)] = failing_tasks(1, "run_1", once_per_dag_run=True, claims_folder=str(tmp_path))
    [(second, ctx2)] = failing_tasks(1, "run_1", once_per_dag_run=True, claims_folder=str(tmp_path))

    with pytest.raises(FamulorError, match="Delivery unknown"):
        first.notify(ctx1)
    second.notify(ctx2)

    assert Counter(m["recipient_phone"] for m in famulor_sandbox.ledger) == {A: 1, B: 1}
    assert [m["variables"]["1"] for m in famulor_sandbox.ledger] == ["task_00", "task_00"]
    assert posts(famulor_sandbox) == 3  # A once (kept its claim), B refused then sent by the second


def test_once_per_dag_run_needs_a_dag_run_in_the_context(famulor_sandbox: Any, tmp_path: Path) -> None:
    with pytest.raises(FamulorValidationError, match="once_per_dag_run"):
        run(notifier(recipients=A, once_per_dag_run=True, claims_folder=str(tmp_path)), "sync")
    assert famulor_sandbox.ledger == []


CLAIM_RACE = """
import sys, time
from famulor_provider.notifications.claims import AlertClaims
start = float(sys.argv[2])
while time.time() < start:
    pass
print(AlertClaims(sys.argv[1]).claim("etl", "manual__2026-01-01T00:00:00+00:00", "+14155550101"))
"""


def test_one_claim_wins_among_twenty_processes(tmp_path: Path) -> None:
    start = str(time.time() + 3)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM_RACE, str(tmp_path / "claims"), start],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(20)
    ]
    results = [racer.communicate(timeout=120)[0].split() for racer in racers]

    assert sorted(results) == [["False"]] * 19 + [["True"]]
    claim = AlertClaims(tmp_path / "claims").path("etl", "manual__2026-01-01T00:00:00+00:00", A)
    assert claim.stat().st_mode & 0o777 == 0o600
    assert A not in str(claim) and "etl" in str(claim)
    assert {p.stat().st_mode & 0o777 for p in claim.parents if p.is_relative_to(tmp_path / "claims")} == {
        0o700
    }


def test_claims_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert AlertClaims(tmp_path / "c").claim("etl", "run", A)
    finally:
        os.umask(old)
    claim = AlertClaims(tmp_path / "c").path("etl", "run", A)
    assert claim.stat().st_mode & 0o777 == 0o600
    folders = (claim.parent, claim.parent.parent, tmp_path / "c")
    assert [p.stat().st_mode & 0o777 for p in folders] == [0o700] * 3


# -- real DAG runs ---------------------------------------------------------------------------------


def test_a_failing_task_alerts_every_recipient_once_with_its_own_values(
    run_dag: Any, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch, logs: Any
) -> None:
    monkeypatch.setenv("FAMULOR_TEST_RECIPIENTS", json.dumps([A, "+1 415 555 0102", A]))

    result = run_dag(DAGS, "notifier_task_callbacks")

    assert result.states == {"fail_first": "failed", "fail_second": "failed", "succeed": "success"}
    by_variable = Counter((m["recipient_phone"], m["variables"]["1"]) for m in famulor_sandbox.ledger)
    assert by_variable == {
        (A, "notifier_task_callbacks/fail_first"): 1,
        (B, "notifier_task_callbacks/fail_first"): 1,
        (A, "notifier_task_callbacks/fail_second"): 1,
        (B, "notifier_task_callbacks/fail_second"): 1,
        ("+14155550109", "succeed ok"): 1,
    }
    # dag.test() logs tasks to the console; a file task handler would write under the home's logs/.
    log_files = (Path(os.environ["AIRFLOW_HOME"]) / "logs").rglob("*")
    output = logs() + "".join(p.read_text(errors="replace") for p in log_files if p.is_file())
    assert "WhatsApp notification sent to all 2 recipient(s)" in output  # the task logs are here
    assert SECRET not in output


def test_a_dag_failure_callback_alerts_every_recipient_once(
    run_dag: Any, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAMULOR_TEST_RECIPIENTS", json.dumps([A, B]))

    result = run_dag(DAGS, "notifier_dag_callbacks")

    assert result.state == "failed"
    sent = messages(famulor_sandbox)
    assert sorted(sent) == [A, B]
    assert {m["variables"]["1"] for m in sent.values()} == {"notifier_dag_callbacks failed"}


def test_the_example_dag_alerts_and_its_run_succeeds(run_dag: Any, famulor_sandbox: Any) -> None:
    result = run_dag(EXAMPLE_DAG, "famulor_alert_on_failure")

    assert result.states == {"fail_on_purpose": "failed", "check_alert": "success"}
    assert result.state == "success"  # so `airflow dags test` exits 0
    sent = messages(famulor_sandbox)
    assert sorted(sent) == [A, B]
    assert {m["variables"]["1"] for m in sent.values()} == {"famulor_alert_on_failure.fail_on_purpose"}


def test_twenty_failing_tasks_alert_once_per_dag_run(
    run_dag: Any, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAMULOR_TEST_RECIPIENTS", json.dumps([A, B]))
    monkeypatch.setenv("FAMULOR_TEST_CLAIMS", str(tmp_path))

    runs = [run_dag(DAGS, "notifier_once_per_dag_run") for _ in range(2)]

    assert [set(r.states.values()) for r in runs] == [{"failed"}, {"failed"}]
    assert len(runs[0].states) == 20
    ledger = famulor_sandbox.ledger
    per_run = Counter((m["recipient_phone"], m["variables"]["1"].split(" failed in ")[1]) for m in ledger)
    assert per_run == {(phone, r.run_id): 1 for r in runs for phone in (A, B)}


def test_a_dag_callback_alerts_once_however_many_tasks_fail(
    run_dag: Any, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAMULOR_TEST_RECIPIENTS", json.dumps([A, B]))

    result = run_dag(DAGS, "notifier_dag_callback_of_many")

    assert result.state == "failed" and len(result.states) == 20
    sent = messages(famulor_sandbox)
    assert sorted(sent) == [A, B]
    assert {m["variables"]["1"] for m in sent.values()} == {f"{result.run_id} failed"}


# -- packaging -------------------------------------------------------------------------------------


def test_the_provider_lists_the_notifier() -> None:
    [path] = get_provider_info()["notifications"]
    module, _, name = path.rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name) is WhatsAppNotifier


def test_importing_the_notifier_imports_no_hook_or_http_client() -> None:
    # Airflow's own BaseNotifier (and the Task SDK behind it) is in the baseline: not ours to count.
    probe = (
        "import sys; import airflow.providers.common.compat.notifier; before = set(sys.modules); "
        "import famulor_provider.notifications.whatsapp; print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120
    )
    added = out.stdout.split()
    assert "famulor_provider.notifications.whatsapp" in added
    assert [m for m in added if m.split(".")[0] in ("requests", "httpx", "tenacity", "urllib3")] == []
    assert "famulor_provider.hooks.famulor" not in added
