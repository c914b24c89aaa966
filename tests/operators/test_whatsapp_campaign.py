"""SendWhatsAppCampaignOperator through real Airflow (``dag.test()``) against the sandbox over HTTP.

Each test runs ``dags/famulor_campaign_cases.py`` (every argument from the run's conf, ``retries=1``)
and asserts on what the sandbox billed (nobody twice), the campaign ledger, the task's XCom
summary, its state and its try number.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock
from urllib.parse import quote

import pytest
from airflow_harness import airflow_version

from famulor_provider.campaign.ledger import iter_ledger_events, ledger_file_path, read_campaign_ledger
from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator
from famulor_provider.testing import FamulorSandbox

DAG_FILE = Path(__file__).parent / "dags" / "famulor_campaign_cases.py"
DAG_ID = "famulor_campaign_cases"
TIMEOUT_DAG_ID = "famulor_campaign_timeout"  # the same task with a 4 s execution_timeout
SEND_PATH = "/user/whatsapp/send"
TEMPLATE_ID = 1201  # order_update (en) of sender 12
PHONES = [f"+1415555{n:04d}" for n in range(1, 9)]


def recipients_for(phones: list[str]) -> list[dict[str, Any]]:
    return [
        {"recipient_phone": phone, "recipient_name": f"R{n}", "variables": {"1": f"A-{n}"}}
        for n, phone in enumerate(phones)
    ]


def billed(sandbox: FamulorSandbox) -> Counter[str]:
    """How many messages the sandbox billed, by recipient."""
    return Counter(row["recipient_phone"] for row in sandbox.ledger)


def outcomes(ledger: str) -> dict[str, tuple[str, int]]:
    """``{phone: (final outcome, attempts over every try)}`` from the campaign ledger file."""
    return {r["recipient_phone"]: (r["outcome"], r["attempts"]) for r in read_campaign_ledger(ledger)}


def ledger_of(result: Any, folder: Path) -> str:
    return ledger_file_path(
        str(folder), dag_id=result.dag_id, run_id=result.run_id, task_id="campaign", map_index=-1
    )


@pytest.fixture
def sandbox() -> Iterator[FamulorSandbox]:
    """The sandbox without its send limit: pacing is not what most tests are about."""
    with FamulorSandbox(send_rate_limit=None) as sb:
        yield sb


@pytest.fixture
def tries(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, BaseException | None]]:
    """Each try of the campaign task, as ``(try_number, what it raised)`` (the DAG runs in-process)."""
    seen: list[tuple[int, BaseException | None]] = []
    execute = SendWhatsAppCampaignOperator.execute

    def recording_execute(self: SendWhatsAppCampaignOperator, context: Any) -> Any:
        try_number = context["ti"].try_number
        before = getattr(self, "before_try", None)
        if before is not None:
            before(try_number)
        try:
            result = execute(self, context)
        except BaseException as err:
            seen.append((try_number, err))
            raise
        seen.append((try_number, None))
        return result

    monkeypatch.setattr(SendWhatsAppCampaignOperator, "execute", recording_execute)
    return seen


@pytest.fixture
def before_try(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[int], None]], None]:
    """Run a function with the try number at the start of each try (needs ``tries``)."""

    def install(hook: Callable[[int], None]) -> None:
        monkeypatch.setattr(SendWhatsAppCampaignOperator, "before_try", staticmethod(hook), raising=False)

    return install


@pytest.fixture
def campaign(run_dag: Callable[..., Any], sandbox: FamulorSandbox, tmp_path: Path) -> Callable[..., Any]:
    """``campaign(recipients, dag_id=DAG_ID, **params)``: one run of the campaign DAG."""

    def run(recipients: Any, dag_id: str = DAG_ID, **params: Any) -> Any:
        conf = {"recipients": recipients, "ledger_path": str(tmp_path / "ledgers"), **params}
        return run_dag(DAG_FILE, dag_id, conf=conf, env=sandbox.env(), timeout=120)

    return run


# -- a. everyone once, paced, duplicates --------------------------------------------------------------


def test_everyone_is_sent_once_at_most_five_per_second(
    run_dag: Callable[..., Any], tmp_path: Path, tries: list[Any]
) -> None:
    recipients = recipients_for(PHONES[:7])
    recipients.append({"recipient_phone": "+1 (415) 555-0003", "variables": {"1": "again"}})  # PHONES[2]
    with FamulorSandbox() as sandbox:  # the API's 5 sends/s limit, on
        result = run_dag(
            DAG_FILE,
            DAG_ID,
            conf={"recipients": recipients, "ledger_path": str(tmp_path), "max_sends_per_second": None},
            env=sandbox.env(),
        )
        requests = sandbox.requests
        ledger = sandbox.ledger

    ti = result.ti("campaign")
    assert (result.state, ti.state, ti.try_number) == ("success", "success", 1)
    summary = ti.return_value
    assert summary == {
        "rows": 8,
        "recipients": 7,
        "invalid": 0,
        "duplicates": 1,
        "sent": 7,
        "rejected": 0,
        "unknown": 0,
        "failed": 0,
        "sent_this_try": 7,
        "answered_429": 0,
        "ledger": ledger_of(result, tmp_path),
    }
    # Once each; the first row of a duplicated phone wins.
    assert Counter(row["recipient_phone"] for row in ledger) == dict.fromkeys(PHONES[:7], 1)
    assert {row["recipient_phone"]: row["variables"] for row in ledger}[PHONES[2]] == {"1": "A-2"}
    assert {row["template_id"] for row in ledger} == {TEMPLATE_ID}
    # At most 5 in any second where the API saw them, and not one 429.
    times = sorted(row["accepted_at"] for row in ledger)
    assert all(later - earlier >= 1.0 for earlier, later in zip(times, times[5:], strict=False))
    assert [r.status for r in requests if r.method == "POST"] == [200] * 7
    # The campaign ledger holds what the API answered: its message_id is the integer
    # whatsapp_message_id, the id the delivery receipts name.
    records = {r["recipient_phone"]: r for r in read_campaign_ledger(summary["ledger"])}
    assert {p: (r["outcome"], r["attempts"], r["message_id"]) for p, r in records.items()} == {
        row["recipient_phone"]: ("sent", 1, row["whatsapp_message_id"]) for row in ledger
    }
    assert all(isinstance(r["message_id"], int) for r in records.values())
    # Its identity is the task instance's, never the try's.
    header = next(iter_ledger_events(summary["ledger"]))
    assert {k: header[k] for k in ("type", "dag_id", "run_id", "task_id", "map_index", "template_id")} == {
        "type": "campaign",
        "dag_id": DAG_ID,
        "run_id": result.run_id,
        "task_id": "campaign",
        "map_index": -1,
        "template_id": None,  # given by name, resolved after the ledger was opened
    }
    assert tries == [(1, None)]


# -- b. invalid rows -----------------------------------------------------------------------------------

INVALID_ROWS = [
    {"recipient_phone": PHONES[0]},
    {"recipient_phone": "12345"},
    {"recipient_phone": PHONES[1], "variables": {"1": "A-1"}},
    {"recipient_phone": PHONES[2], "colour": "blue"},
    {"recipient_phone": PHONES[3]},
]


def test_invalid_rows_fail_before_anything_is_sent(
    campaign: Callable[..., Any], sandbox: FamulorSandbox, tries: list[Any]
) -> None:
    result = campaign(INVALID_ROWS)

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("failed", 1)  # retries=1, but no retry
    assert sandbox.ledger == []
    assert [r for r in sandbox.requests if r.method == "POST"] == []
    [(_, error)] = tries
    text = str(error)
    assert "2 of 5 rows" in text and "nothing was sent" in text
    assert "row 2:" in text and "got '****'" in text and "12345" not in text  # masked
    assert "row 4:" in text and "'colour'" in text
    assert "invalid_recipients='skip'" in text


def test_invalid_rows_are_skipped_and_counted(campaign: Callable[..., Any], sandbox: FamulorSandbox) -> None:
    result = campaign(INVALID_ROWS, invalid_recipients="skip")

    summary = result.xcom("campaign")
    assert result.ti("campaign").state == "success"
    assert (summary["rows"], summary["invalid"], summary["recipients"], summary["sent"]) == (5, 2, 3, 3)
    assert billed(sandbox) == {PHONES[0]: 1, PHONES[1]: 1, PHONES[3]: 1}


# -- c. a lost answer ------------------------------------------------------------------------------------


def test_a_lost_answer_is_unknown_and_fails_without_retry(
    campaign: Callable[..., Any], sandbox: FamulorSandbox, tries: list[Any], tmp_path: Path
) -> None:
    lost = PHONES[1]
    sandbox.inject("accept_then_drop", recipient_phone=lost)

    result = campaign(recipients_for(PHONES[:5]))

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("failed", 1)
    assert billed(sandbox) == dict.fromkeys(PHONES[:5], 1)  # the lost one was billed, once
    ledger = ledger_of(result, tmp_path / "ledgers")
    assert outcomes(ledger) == {**dict.fromkeys(PHONES[:5], ("sent", 1)), lost: ("unknown", 1)}
    [(_, error)] = tries
    text = str(error)
    assert "0 recipient(s) refused" in text and "1 whose delivery is unknown" in text
    assert "4 sent" in text and ledger in text and "without retry" in text


# -- d. refusals: rejected for good, or not sent this time ---------------------------------------

NOT_THIS_TIME = {"success": False, "error": "Something went wrong", "error_code": "UNKNOWN_ERROR"}


def posts(sandbox: FamulorSandbox) -> int:
    """How many send requests the sandbox received."""
    return len([r for r in sandbox.requests if r.method == "POST"])


def test_a_refused_recipient_is_retried_alone_and_a_rejected_one_never(
    campaign: Callable[..., Any], sandbox: FamulorSandbox, tries: list[Any], tmp_path: Path
) -> None:
    refused, rejected = PHONES[2], PHONES[3]
    sandbox.inject("status", status=422, body=NOT_THIS_TIME, path=SEND_PATH, recipient_phone=refused)
    sandbox.inject("invalid_phone", recipient_phone=rejected, times=5)

    result = campaign(recipients_for(PHONES[:5]))

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("success", 2)
    assert billed(sandbox) == dict.fromkeys([PHONES[0], PHONES[1], PHONES[2], PHONES[4]], 1)
    # Five on try 1; on try 2 the refused one again, and the rejected one is not posted again.
    assert posts(sandbox) == 6
    (_, first), (_, second) = tries
    assert "1 recipient(s) refused by the API" in str(first) and "tries the refused" in str(first)
    assert second is None
    summary = ti.return_value
    assert (summary["sent"], summary["sent_this_try"], summary["failed"], summary["rejected"]) == (4, 1, 0, 1)
    assert outcomes(summary["ledger"]) == {
        **dict.fromkeys(PHONES[:5], ("sent", 1)),
        refused: ("sent", 2),
        rejected: ("rejected", 1),
    }
    events = list(iter_ledger_events(summary["ledger"]))
    assert [e["try_number"] for e in events if e["type"] == "try"] == [1, 2]
    refusal = next(e for e in events if e["type"] == "outcome" and e["outcome"] == "refused")
    assert (refusal["recipient_phone"], refusal["error_code"]) == (refused, "UNKNOWN_ERROR")
    rejection = next(e for e in events if e["type"] == "outcome" and e["outcome"] == "rejected")
    assert (rejection["recipient_phone"], rejection["error_code"]) == (rejected, "INVALID_PHONE")


def test_rejected_recipients_do_not_fail_the_task_by_default(
    campaign: Callable[..., Any], sandbox: FamulorSandbox, tries: list[Any]
) -> None:
    sandbox.inject("invalid_phone", recipient_phone=PHONES[0])
    twilio = {"success": False, "error": "Invalid 'To' Phone Number", "error_code": "TWILIO_ERROR_21211"}
    sandbox.inject("status", status=422, body=twilio, path=SEND_PATH, recipient_phone=PHONES[4])

    result = campaign(recipients_for(PHONES[:6]))

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("success", 1)
    assert tries == [(1, None)]
    assert posts(sandbox) == 6
    summary = ti.return_value
    assert (summary["sent"], summary["rejected"], summary["failed"], summary["unknown"]) == (4, 2, 0, 0)


@pytest.mark.parametrize(
    ("max_rejected", "state"),
    [(1, "failed"), ("0.2", "failed"), (2, "success"), (0.4, "success")],
)
def test_past_max_rejected_the_task_fails_without_retry_after_everyone_was_tried(
    campaign: Callable[..., Any],
    sandbox: FamulorSandbox,
    tries: list[Any],
    max_rejected: Any,
    state: str,
) -> None:
    for phone in (PHONES[0], PHONES[3]):
        sandbox.inject("invalid_phone", recipient_phone=phone)

    result = campaign(recipients_for(PHONES[:5]), max_rejected=max_rejected)

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == (state, 1)  # retries=1, but no retry
    assert posts(sandbox) == 5  # every recipient was tried, once
    assert billed(sandbox) == dict.fromkeys([PHONES[1], PHONES[2], PHONES[4]], 1)
    [(_, error)] = tries
    if state == "failed":
        text = str(error)
        assert "2 of 5 recipient(s) rejected" in text and f"max_rejected={float(max_rejected):g} " in text
        assert "without retry" in text and "3 sent" in text
    else:
        assert error is None


@pytest.mark.parametrize("bad", [-1, 1.5, "many", True])
def test_a_bad_max_rejected_fails_before_sending(
    campaign: Callable[..., Any], sandbox: FamulorSandbox, tries: list[Any], bad: Any
) -> None:
    result = campaign(recipients_for(PHONES[:2]), max_rejected=bad)

    assert (result.ti("campaign").state, result.ti("campaign").try_number) == ("failed", 1)
    assert [r for r in sandbox.requests if r.method == "POST"] == []
    [(_, error)] = tries
    assert "Invalid max_rejected" in str(error) and "fraction below 1" in str(error)


# -- e. a 429 storm --------------------------------------------------------------------------------------


def test_answers_429_wait_and_go_on(campaign: Callable[..., Any], sandbox: FamulorSandbox) -> None:
    sandbox.inject("status", status=429, retry_after=1, times=3, path=SEND_PATH)

    result = campaign(recipients_for(PHONES[:6]))

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("success", 1)
    assert billed(sandbox) == dict.fromkeys(PHONES[:6], 1)
    summary = ti.return_value
    assert (summary["sent"], summary["answered_429"]) == (6, 3)
    posts = [r for r in sandbox.requests if r.method == "POST"]
    assert sorted(r.status for r in posts) == [200] * 6 + [429] * 3
    # Nothing was sent for a second after the first 429 (its Retry-After).
    first_429 = min(r.monotonic for r in posts if r.status == 429)
    after = [r.monotonic for r in posts if r.monotonic > first_429 and r.status == 200]
    assert after and min(after) - first_429 >= 0.9


def test_429_holds_that_overlap_end_at_the_latest_end_not_their_sum(
    campaign: Callable[..., Any], sandbox: FamulorSandbox
) -> None:
    # Five sends in flight at once (each answer takes 0.3 s), each answered 429 Retry-After: 2.
    sandbox.inject("status", status=429, retry_after=2, times=5, delay=0.3, path=SEND_PATH)

    result = campaign(recipients_for(PHONES[:5]))

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("success", 1)
    assert billed(sandbox) == dict.fromkeys(PHONES[:5], 1)
    assert ti.return_value["answered_429"] == 5
    posts = [r for r in sandbox.requests if r.method == "POST"]
    limited = sorted(r.monotonic for r in posts if r.status == 429)
    assert len(limited) == 5 and limited[-1] - limited[0] < 0.3  # all five were in flight together
    # The next send left about 2 s after the 429s arrived (0.3 s after their requests): not 10 s.
    gap = min(r.monotonic for r in posts if r.status == 200) - limited[0]
    assert 2.2 <= gap < 3.5, gap


# -- f. sender offline -----------------------------------------------------------------------------------


def test_an_offline_sender_pauses_the_campaign_until_it_is_back(
    campaign: Callable[..., Any],
    sandbox: FamulorSandbox,
    tries: list[Any],
    before_try: Callable[..., None],
) -> None:
    def go_offline(try_number: int) -> None:
        sandbox.set_sender(12, status="offline")
        sandbox.schedule_sender(12, after_seconds=2, status="online")

    before_try(go_offline)

    result = campaign(recipients_for(PHONES[:5]), offline_timeout=20)

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("success", 1)
    assert billed(sandbox) == dict.fromkeys(PHONES[:5], 1)
    posts = [r for r in sandbox.requests if r.method == "POST"]
    refused = [r for r in posts if r.status == 422]
    assert refused and len(posts) == 5 + len(refused)
    accepted = [r.monotonic for r in posts if r.status == 200]
    assert min(accepted) - min(r.monotonic for r in refused) >= 1.5  # paused, not hammering
    assert ti.return_value["sent"] == 5


def test_a_sender_offline_too_long_fails_and_the_retry_resumes(
    campaign: Callable[..., Any],
    sandbox: FamulorSandbox,
    tries: list[Any],
    before_try: Callable[..., None],
) -> None:
    def go_offline(try_number: int) -> None:
        if try_number == 1:  # back 3.5 s after try 1 started: after its 2 s offline_timeout
            sandbox.set_sender(12, status="offline")
            sandbox.schedule_sender(12, after_seconds=3.5, status="online")

    before_try(go_offline)

    result = campaign(recipients_for(PHONES[:5]), offline_timeout=2)

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("success", 2)
    assert billed(sandbox) == dict.fromkeys(PHONES[:5], 1)
    (_, first), (_, second) = tries
    assert "stayed offline for 2 s" in str(first) and "A retry resumes" in str(first)
    assert second is None
    assert ti.return_value["sent"] == 5


# -- g. a task timeout while an answer hangs ------------------------------------------------------


@pytest.mark.skipif(
    airflow_version().startswith("2."),
    reason="Airflow 2's AirflowTaskTimeout is a BaseException that escapes dag.test(), ending the "
    "run before its retry (a real worker retries it)",
)
@pytest.mark.parametrize("resend_unknown", [False, True])
def test_a_timed_out_try_leaves_the_hung_send_unknown(
    campaign: Callable[..., Any],
    sandbox: FamulorSandbox,
    tries: list[Any],
    tmp_path: Path,
    resend_unknown: bool,
) -> None:
    hung = PHONES[0]
    sandbox.inject("hang", recipient_phone=hung, delay=30)

    result = campaign(recipients_for(PHONES[:4]), dag_id=TIMEOUT_DAG_ID, resend_unknown=resend_unknown)

    ti = result.ti("campaign")
    assert ti.try_number == 2
    (_, first), (_, second) = tries
    assert type(first).__name__ == "AirflowTaskTimeout"
    ledger = ledger_of(result, tmp_path / "ledgers")
    if resend_unknown:
        assert (ti.state, second) == ("success", None)
        assert billed(sandbox) == {**dict.fromkeys(PHONES[:4], 1), hung: 2}  # sent once more, as asked
        assert ti.return_value["unknown"] == 0
        assert ti.return_value["sent_this_try"] == 1
    else:
        assert ti.state == "failed"
        assert billed(sandbox) == dict.fromkeys(PHONES[:4], 1)
        assert "1 whose delivery is unknown" in str(second) and "without retry" in str(second)
        assert outcomes(ledger) == {**dict.fromkeys(PHONES[:4], ("sent", 1)), hung: ("unknown", 1)}


# -- h. the sender's messaging limit -------------------------------------------------------------


def test_a_messaging_limit_smaller_than_the_campaign_fails_before_sending(
    campaign: Callable[..., Any], sandbox: FamulorSandbox, tries: list[Any]
) -> None:
    sandbox.set_sender(12, messaging_limit=3)

    result = campaign(recipients_for(PHONES[:4]))

    assert (result.ti("campaign").state, result.ti("campaign").try_number) == ("failed", 1)
    assert [r for r in sandbox.requests if r.method == "POST"] == []
    [(_, error)] = tries
    assert "4 unique recipients" in str(error) and "only 3 unique recipients per 24 h" in str(error)
    assert "check_messaging_limit=False" in str(error)

    result = campaign(recipients_for(PHONES[:4]), check_messaging_limit=False)

    assert result.ti("campaign").state == "success"
    assert billed(sandbox) == dict.fromkeys(PHONES[:4], 1)


# -- i. recipients from a file ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "uri"])
def test_recipients_from_a_file(
    campaign: Callable[..., Any], sandbox: FamulorSandbox, tmp_path: Path, kind: str, as_uri: bool
) -> None:
    file = tmp_path / f"recipients.{kind}"
    if kind == "csv":
        file.write_text(
            "recipient_phone,recipient_name,1\n"
            "+14155550001,Ada,A-1\n"
            "+1 415 555 0002,,A-2\n"
            "+14155550001,Ada again,A-3\n",
            encoding="utf-8",
        )
    else:
        rows = [
            {"recipient_phone": "+14155550001", "recipient_name": "Ada", "variables": {"1": "A-1"}},
            {"recipient_phone": "+1 415 555 0002", "variables": {"1": "A-2"}},
            {"recipient_phone": "+14155550001", "variables": {"1": "A-3"}},
        ]
        file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    result = campaign(file.as_uri() if as_uri else str(file))

    summary = result.xcom("campaign")
    assert result.ti("campaign").state == "success"
    assert (summary["rows"], summary["recipients"], summary["duplicates"], summary["sent"]) == (3, 2, 1, 2)
    assert {r["recipient_phone"]: (r["recipient_name"], r["variables"]) for r in sandbox.ledger} == {
        "+14155550001": ("Ada", {"1": "A-1"}),
        "+14155550002": (None, {"1": "A-2"}),
    }


# -- j. a later try without the ledger --------------------------------------------------------------


def test_a_later_try_that_finds_no_ledger_sends_nothing(
    campaign: Callable[..., Any],
    sandbox: FamulorSandbox,
    tries: list[Any],
    before_try: Callable[..., None],
    tmp_path: Path,
) -> None:
    # Try 1 fails, retryable.
    sandbox.inject("status", status=422, body=NOT_THIS_TIME, path=SEND_PATH, recipient_phone=PHONES[1])

    def lose_the_ledger(try_number: int) -> None:
        if try_number == 2:  # as if the retry ran on a worker that cannot see the folder
            for path in (tmp_path / "ledgers").rglob("*.jsonl"):
                path.unlink()

    before_try(lose_the_ledger)

    result = campaign(recipients_for(PHONES[:3]))

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("failed", 2)
    assert billed(sandbox) == {PHONES[0]: 1, PHONES[2]: 1}
    assert len([r for r in sandbox.requests if r.method == "POST"]) == 3  # all on try 1
    (_, first), (_, second) = tries
    assert "refused" in str(first)
    text = str(second)
    assert "Try 2 found no campaign ledger" in text and "storage every worker sees" in text
    assert "allow_new_ledger=True" in text and "missing_ok" not in text
    assert not list((tmp_path / "ledgers").rglob("*.jsonl"))  # and did not create a new one


# -- k. no balance: stop at once, resume after a clear ------------------------------------------


def test_insufficient_balance_stops_at_once_and_a_clear_resumes(
    campaign: Callable[..., Any],
    sandbox: FamulorSandbox,
    tries: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox.inject("insufficient_balance", recipient_phone=PHONES[2])

    # 5 sends/s: each answer is back before the next send would start.
    result = campaign(recipients_for(PHONES[:6]), max_sends_per_second=5)

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("failed", 1)  # retries=1, but no retry
    assert billed(sandbox) == {PHONES[0]: 1, PHONES[1]: 1}
    assert len([r for r in sandbox.requests if r.method == "POST"]) == 3
    [(_, error)] = tries
    assert "INSUFFICIENT_BALANCE" in str(error) or "balance" in str(error).lower()
    assert "Nothing more was sent" in str(error) and "clear the task" in str(error)

    # The balance is topped up and the task cleared: its next try (same task instance) resumes.
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    operator = SendWhatsAppCampaignOperator(
        task_id="campaign",
        sender_id=12,
        template_name="order_update",
        language="en",
        recipients=recipients_for(PHONES[:6]),
        ledger_path=str(tmp_path / "ledgers"),
        max_sends_per_second=50,
    )
    ti_again = SimpleNamespace(
        dag_id=DAG_ID, run_id=result.run_id, task_id="campaign", map_index=-1, try_number=2
    )
    summary = operator.execute({"ti": ti_again})  # type: ignore[arg-type]

    assert billed(sandbox) == dict.fromkeys(PHONES[:6], 1)
    assert (summary["sent"], summary["sent_this_try"], summary["failed"]) == (6, 4, 0)
    assert summary["ledger"] == ledger_of(result, tmp_path / "ledgers")
    assert outcomes(summary["ledger"])[PHONES[2]] == ("sent", 2)
    assert os.path.exists(summary["ledger"])


# -- l. the ledger: a second writer, bad paths -------------------------------------------------------


def test_a_second_writer_on_the_ledger_stops_the_try_and_the_retry_resumes(
    campaign: Callable[..., Any],
    sandbox: FamulorSandbox,
    tries: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from famulor_provider.hooks.famulor import FamulorHook

    send = FamulorHook.send_whatsapp_template
    written: list[str] = []

    def send_while_another_writes(self: FamulorHook, *args: Any, **kwargs: Any) -> Any:
        if args[2] == PHONES[1] and not written:  # a zombie try on another host, no lock there
            [path] = (tmp_path / "ledgers").rglob("*.jsonl")
            other = {"type": "try", "try_number": 9, "hostname": "worker-b", "pid": 4242}
            with open(path, "a", encoding="utf-8") as file:
                file.write(json.dumps(other) + "\n")
            written.append(str(path))
        return send(self, *args, **kwargs)

    monkeypatch.setattr(FamulorHook, "send_whatsapp_template", send_while_another_writes)

    result = campaign(recipients_for(PHONES[:5]), max_sends_per_second=5)

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("success", 2)
    assert billed(sandbox) == dict.fromkeys(PHONES[:5], 1)
    (_, first), (_, second) = tries
    assert type(first).__name__ == "FamulorLedgerConflictError"
    assert "try 9 on host worker-b (pid 4242)" in str(first) and "sends nothing more" in str(first)
    assert second is None
    events = list(iter_ledger_events(written[0]))
    assert [e["try_number"] for e in events if e["type"] == "try"] == [1, 9, 2]
    foreign = next(n for n, e in enumerate(events) if e.get("pid") == 4242)
    retry = next(n for n, e in enumerate(events) if e.get("try_number") == 2)
    # Try 1 wrote no attempt after the foreign line; only outcomes of sends already in flight.
    assert [e["type"] for e in events[foreign + 1 : retry]] in (["outcome"], [])


@pytest.mark.parametrize(
    ("ledger_path", "why"),
    [("/proc/famulor-ledgers", "cannot be created there"), ("FILE", "is a file, not a folder")],
)
def test_a_bad_ledger_path_fails_once_without_retry(
    run_dag: Callable[..., Any],
    sandbox: FamulorSandbox,
    tries: list[Any],
    tmp_path: Path,
    ledger_path: str,
    why: str,
) -> None:
    if ledger_path == "FILE":
        (tmp_path / "plain-file").write_text("x")
        ledger_path = str(tmp_path / "plain-file" / "ledgers")
    conf = {"recipients": recipients_for(PHONES[:2]), "ledger_path": ledger_path}

    result = run_dag(DAG_FILE, DAG_ID, conf=conf, env=sandbox.env())

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("failed", 1)  # retries=1, but no retry
    assert [r for r in sandbox.requests if r.method == "POST"] == []
    [(_, error)] = tries
    assert type(error).__name__ == "AirflowFailException"
    assert "Invalid ledger_path" in str(error) and why in str(error) and ledger_path in str(error)


# -- m. personal data in the log ------------------------------------------------------------------


@pytest.mark.parametrize("full_numbers", [False, True])
def test_per_recipient_lines_mask_phones_and_read_the_switch_once(
    run_dag: Callable[..., Any],
    sandbox: FamulorSandbox,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    full_numbers: bool,
) -> None:
    from famulor_provider.campaign import runner

    reads: list[bool] = []
    switch = runner.full_phone_numbers_in_logs

    def counted() -> bool:
        reads.append(switch())
        return reads[-1]

    monkeypatch.setattr(runner, "full_phone_numbers_in_logs", counted)
    sandbox.inject("invalid_phone", recipient_phone=PHONES[1])
    env = {**sandbox.env(), "AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS": str(full_numbers).lower()}
    conf = {"recipients": recipients_for(PHONES[:6]), "ledger_path": str(tmp_path)}

    with caplog.at_level("INFO"):
        result = run_dag(DAG_FILE, DAG_ID, conf=conf, env=env)

    assert result.ti("campaign").state == "success"
    assert reads == [full_numbers]  # once per run, not once per line
    lines = [r.getMessage() for r in caplog.records if r.levelno >= 20 and r.name.startswith("famulor")]
    shown = [phone for phone in PHONES[:6] if any(phone in line for line in lines)]
    rejected = [line for line in lines if "rejected for good" in line]
    if full_numbers:
        assert shown == [PHONES[1]]  # only the rejection's line names a recipient
        assert PHONES[1] in rejected[0]
    else:
        assert shown == []
        assert "+1415****02" in rejected[0]
    # Progress and summary lines carry counts only.
    assert any(line.startswith("Campaign done: 6/6 recipients") for line in lines)


# -- n. a ledger on S3 (moto's server on 127.0.0.1) --------------------------------------------------


@pytest.fixture
def s3() -> Iterator[Any]:
    pytest.importorskip("airflow.providers.amazon", reason="needs airflow-provider-famulor[amazon]")
    from s3_server import S3Server

    with S3Server() as server:
        server.create_bucket("famulor-ledgers")
        yield server


def test_an_s3_ledger_resumes_on_the_retry_and_is_read_back(
    run_dag: Callable[..., Any], sandbox: FamulorSandbox, s3: Any, tries: list[Any]
) -> None:
    from s3_server import aws_conn_env

    refused = PHONES[2]
    sandbox.inject("status", status=422, body=NOT_THIS_TIME, path=SEND_PATH, recipient_phone=refused)
    env = {**sandbox.env(), **aws_conn_env(s3.url)}
    conf = {"recipients": recipients_for(PHONES[:5]), "ledger_path": "s3://famulor-ledgers/campaigns"}

    result = run_dag(DAG_FILE, DAG_ID, conf=conf, env=env, timeout=120)

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("success", 2)
    assert billed(sandbox) == dict.fromkeys(PHONES[:5], 1)
    assert posts(sandbox) == 6  # the refused one twice, nobody else
    summary = ti.return_value
    assert summary["ledger"] == (
        f"s3://famulor-ledgers/campaigns/{DAG_ID}/{quote(result.run_id, safe='')}/campaign/"
    )
    assert (summary["sent"], summary["sent_this_try"], summary["failed"]) == (5, 1, 0)
    (_, first), (_, second) = tries
    assert "1 recipient(s) refused" in str(first) and second is None
    with mock.patch.dict(os.environ, aws_conn_env(s3.url)):
        assert outcomes(summary["ledger"]) == {**dict.fromkeys(PHONES[:5], ("sent", 1)), refused: ("sent", 2)}
        events = list(iter_ledger_events(summary["ledger"]))
    assert [e["try_number"] for e in events if e["type"] == "try"] == [1, 2]


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        ("no-bucket", "'no-such-bucket' does not exist"),
        ("ignores-if-none-match", "ignores conditional writes"),
    ],
)
def test_a_bad_s3_setup_fails_once_without_retry_before_any_send(
    run_dag: Callable[..., Any], sandbox: FamulorSandbox, s3: Any, tries: list[Any], setup: str, why: str
) -> None:
    from s3_server import S3Proxy, aws_conn_env

    with S3Proxy(s3.url, strip_if_none_match=True) as proxy:
        endpoint, bucket = (
            (s3.url, "no-such-bucket") if setup == "no-bucket" else (proxy.url, "famulor-ledgers")
        )
        conf = {"recipients": recipients_for(PHONES[:3]), "ledger_path": f"s3://{bucket}/campaigns"}
        result = run_dag(DAG_FILE, DAG_ID, conf=conf, env={**sandbox.env(), **aws_conn_env(endpoint)})

    ti = result.ti("campaign")
    assert (ti.state, ti.try_number) == ("failed", 1)  # retries=1, but no retry
    assert posts(sandbox) == 0
    [(_, error)] = tries
    assert type(error).__name__ == "AirflowFailException"
    assert "Invalid ledger_path" in str(error) and why in str(error)
