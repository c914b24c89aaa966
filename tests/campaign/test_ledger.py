"""The campaign send ledger on real files: format, resume, crashes, torn lines and locking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from famulor_provider.campaign import ledger as ledger_module
from famulor_provider.campaign.ledger import (
    IN_FLIGHT,
    CampaignLedger,
    decide,
    default_ledger_folder,
    iter_ledger_events,
    ledger_file_path,
    read_campaign_ledger,
    resolve_ledger_folder,
    summarize,
)
from famulor_provider.campaign.stores import posix as posix_store
from famulor_provider.exceptions import (
    FamulorError,
    FamulorLedgerConflictError,
    FamulorLedgerMissingError,
    FamulorValidationError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
IDENTITY = {"dag_id": "campaign", "run_id": "manual__2025-01-31T09:00:00+00:00", "task_id": "send"}
PHONE_A = "+14155550001"
PHONE_B = "+14155550002"
PHONE_C = "+14155550003"


def open_ledger(folder: Path | str, *, try_number: int = 1, map_index: int = -1, **kwargs) -> CampaignLedger:
    return CampaignLedger.open(
        folder,
        **IDENTITY,
        map_index=map_index,
        try_number=try_number,
        sender_id=12,
        template_id=7,
        **kwargs,
    )


def lines_of(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


# -- location ---------------------------------------------------------------------------------------


def test_file_layout_is_encoded_and_stays_inside_the_folder(tmp_path):
    path = ledger_file_path(tmp_path, **IDENTITY, map_index=-1)
    assert path == str(tmp_path / "campaign" / "manual__2025-01-31T09%3A00%3A00%2B00%3A00" / "send.jsonl")
    assert ledger_file_path(tmp_path, **IDENTITY, map_index=3).endswith("/send__3.jsonl")

    hostile = ledger_file_path(tmp_path, dag_id="..", run_id="../../etc", task_id="a/b", map_index=0)
    assert os.path.commonpath([hostile, str(tmp_path)]) == str(tmp_path)
    assert hostile == str(tmp_path / "%2E." / "%2E.%2F..%2Fetc" / "a%2Fb__0.jsonl")
    # Ids that differ only in characters the file system dislikes still get files of their own.
    assert ledger_file_path(tmp_path, dag_id="d", run_id="a:b", task_id="t", map_index=-1) != (
        ledger_file_path(tmp_path, dag_id="d", run_id="a_b", task_id="t", map_index=-1)
    )
    long_id = ledger_file_path(tmp_path, dag_id="d", run_id="x" * 300, task_id="t", map_index=-1)
    assert all(len(part) <= 180 for part in Path(long_id).parts)


def test_file_uri_and_default_folder(tmp_path, monkeypatch):
    assert resolve_ledger_folder(f"file://{tmp_path}") == str(tmp_path)
    assert resolve_ledger_folder(f"file://localhost{tmp_path}/") == str(tmp_path)
    monkeypatch.setenv("AIRFLOW_HOME", "/opt/airflow")
    assert default_ledger_folder() == "/opt/airflow/famulor/campaign-ledgers"
    assert (
        resolve_ledger_folder(None) == resolve_ledger_folder("  ") == "/opt/airflow/famulor/campaign-ledgers"
    )
    monkeypatch.delenv("AIRFLOW_HOME")
    assert default_ledger_folder() == os.path.expanduser("~/airflow/famulor/campaign-ledgers")

    with open_ledger(f"file://{tmp_path}") as ledger:
        assert ledger.path.startswith(str(tmp_path) + "/")


@pytest.mark.parametrize("uri", ["gs://bucket/x", "abfs://c@acct/x", "http://host/x"])
def test_stores_other_than_s3_and_posix_are_refused_naming_both(uri, tmp_path):
    with pytest.raises(FamulorValidationError, match=r"is not a store the ledger can write to") as err:
        open_ledger(uri)
    assert err.value.field == "ledger_path"
    assert "s3://bucket/prefix" in str(err.value) and "NFS, EFS or a shared volume" in str(err.value)


def test_an_s3_ledger_path_names_a_folder_of_objects_per_task_instance():
    assert resolve_ledger_folder("s3://bucket/ledgers/") == "s3://bucket/ledgers"
    assert ledger_file_path("s3://bucket", **IDENTITY, map_index=3) == (
        "s3://bucket/campaign/manual__2025-01-31T09%3A00%3A00%2B00%3A00/send__3/"
    )
    with pytest.raises(FamulorValidationError, match="s3://bucket or s3://bucket/prefix"):
        resolve_ledger_folder("s3:///no-bucket")


def test_relative_paths_and_remote_file_uris_are_refused():
    with pytest.raises(FamulorValidationError, match="absolute path"):
        resolve_ledger_folder("ledgers")
    with pytest.raises(FamulorValidationError, match="local path"):
        resolve_ledger_folder("file://otherhost/ledgers")


# -- format and resume ------------------------------------------------------------------------------


def test_first_try_writes_the_header_and_a_try_line(tmp_path):
    with open_ledger(tmp_path, map_index=2) as ledger:
        assert ledger.state == {}
        assert ledger.tries == 1
    header, try_line = lines_of(ledger.path)
    assert header["type"] == "campaign"
    assert {key: header[key] for key in ("format", "dag_id", "run_id", "task_id", "map_index")} == {
        "format": 1,
        **IDENTITY,
        "map_index": 2,
    }
    assert (header["sender_id"], header["template_id"]) == (12, 7)
    assert header["created_at"].endswith("+00:00")
    assert try_line["type"] == "try"
    assert try_line["try_number"] == 1
    assert try_line["pid"] == os.getpid()
    assert try_line["hostname"]


def test_attempts_and_outcomes_are_read_back_by_the_next_try(tmp_path):
    with open_ledger(tmp_path) as ledger:
        ledger.record_attempt(PHONE_A)
        ledger.record_outcome(PHONE_A, "sent", message_id="m-1", status="queued")
        ledger.record_attempt(PHONE_B)
        ledger.record_outcome(PHONE_B, "refused", error_code="INVALID_PHONE", error="x" * 1000)
        ledger.record_attempt(PHONE_C)
        ledger.record_outcome(PHONE_C, "unknown", error=TimeoutError("read timed out"))
        assert ledger.counts() == {"sent": 1, "refused": 1, "rejected": 0, "unknown": 1, "in_flight": 0}

    with open_ledger(tmp_path, try_number=2) as ledger:
        assert ledger.state == {PHONE_A: "sent", PHONE_B: "refused", PHONE_C: "unknown"}
        assert ledger.tries == 2
        assert not ledger.should_send(PHONE_A, resend_unknown=True)
        assert ledger.should_send(PHONE_B)
        assert not ledger.should_send(PHONE_C)
        assert ledger.should_send(PHONE_C, resend_unknown=True)
        assert ledger.should_send("+14155550009")
        ledger.record_attempt(PHONE_B)
        ledger.record_outcome(PHONE_B, "sent", message_id=88)
        assert ledger.counts() == {"sent": 2, "refused": 0, "rejected": 0, "unknown": 1, "in_flight": 0}

    events = lines_of(ledger.path)
    assert [event["type"] for event in events] == ["campaign", "try"] + ["attempt", "outcome"] * 3 + [
        "try",
        "attempt",
        "outcome",
    ]
    refused = events[5]
    assert refused["error_code"] == "INVALID_PHONE"
    assert len(refused["error"]) == 300
    assert events[7]["error"] == "read timed out"
    assert "message_id" not in refused

    records = list(read_campaign_ledger(ledger.path))
    assert [(r["recipient_phone"], r["outcome"], r["attempts"]) for r in records] == [
        (PHONE_A, "sent", 1),
        (PHONE_B, "sent", 2),
        (PHONE_C, "unknown", 1),
    ]
    assert records[1]["message_id"] == 88
    assert records[1]["error_code"] is None  # the last outcome's fields, not the refusal's
    assert records[0]["status"] == "queued"
    assert summarize(records) == {
        "recipients": 3,
        "sent": 2,
        "refused": 0,
        "rejected": 0,
        "unknown": 1,
        "attempts": 4,
    }
    assert list(read_campaign_ledger(Path(ledger.path).as_uri())) == records  # % in names: %25 in a URI


def test_decide_matrix():
    assert decide(None, False)
    assert decide("refused", False)
    assert not decide("sent", True)
    assert not decide("unknown", False)
    assert decide("unknown", True)
    assert not decide(IN_FLIGHT, False)
    assert decide(IN_FLIGHT, True)


def test_a_sent_phone_cannot_be_attempted_again(tmp_path):
    with open_ledger(tmp_path) as ledger:
        ledger.record_attempt(PHONE_A)
        ledger.record_outcome(PHONE_A, "sent")
        with pytest.raises(FamulorError, match="already sent"):
            ledger.record_attempt(PHONE_A)
        with pytest.raises(FamulorValidationError, match="outcome"):
            ledger.record_outcome(PHONE_B, "delivered")
    with pytest.raises(FamulorError, match="closed"):
        ledger.record_attempt(PHONE_B)


def test_a_later_try_without_a_ledger_fails_and_creates_nothing(tmp_path):
    with pytest.raises(FamulorLedgerMissingError, match="storage every worker sees") as err:
        open_ledger(tmp_path, try_number=2)
    path = ledger_file_path(tmp_path, **IDENTITY, map_index=-1)
    assert path in str(err.value)
    assert not os.path.exists(path)

    with open_ledger(tmp_path, try_number=2, allow_new_ledger=True) as ledger:
        assert ledger.header is not None


def test_a_ledger_of_another_task_instance_is_refused(tmp_path):
    path = Path(ledger_file_path(tmp_path, **IDENTITY, map_index=-1))
    path.parent.mkdir(parents=True)
    header = {"type": "campaign", "format": 1, **IDENTITY, "task_id": "other", "map_index": -1}
    path.write_text(json.dumps(header) + "\n")
    with pytest.raises(FamulorError, match="belongs to"):
        open_ledger(tmp_path)


def test_a_torn_last_line_is_ignored_and_the_next_line_starts_fresh(tmp_path):
    with open_ledger(tmp_path) as ledger:
        ledger.record_attempt(PHONE_A)
        ledger.record_outcome(PHONE_A, "sent")
        ledger.record_attempt(PHONE_B)
    with open(ledger.path, "ab") as file:  # a crash in the middle of writing B's outcome
        file.write(b'{"type":"outcome","recipient_phone":"+1415555')

    with open_ledger(tmp_path, try_number=2) as ledger:
        assert ledger.skipped_lines == 1
        assert ledger.state == {PHONE_A: "sent", PHONE_B: IN_FLIGHT}
        ledger.record_attempt(PHONE_C)

    raw = Path(ledger.path).read_bytes().split(b"\n")
    assert raw[-1] == b""
    assert raw[-4].startswith(b'{"type":"outcome","recipient_phone":"+1415555')  # kept, on its own line
    assert json.loads(raw[-3])["type"] == "try"
    assert json.loads(raw[-2])["recipient_phone"] == PHONE_C
    assert [event["type"] for event in iter_ledger_events(ledger.path)][-2:] == ["try", "attempt"]
    assert list(read_campaign_ledger(ledger.path))[1]["outcome"] == "unknown"


def test_a_ledger_cut_before_its_header_gets_one(tmp_path):
    path = Path(ledger_file_path(tmp_path, **IDENTITY, map_index=-1))
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"type":"camp')
    with open_ledger(tmp_path, try_number=2) as ledger:
        assert ledger.header is not None
    assert [event["type"] for event in iter_ledger_events(path)] == ["campaign", "try"]


# -- locking and crashes ----------------------------------------------------------------------------


def test_a_second_open_waits_for_the_lock_then_fails(tmp_path, monkeypatch):
    first = open_ledger(tmp_path)
    clock = [0.0]
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(posix_store, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(posix_store, "_sleep", fake_sleep)
    with pytest.raises(FamulorError, match="Another try of this task instance is still running"):
        open_ledger(tmp_path, try_number=2, lock_timeout=1.0)
    assert sleeps == [0.2] * 5

    def release_while_waiting(seconds: float) -> None:
        fake_sleep(seconds)
        first.close()

    monkeypatch.setattr(posix_store, "_sleep", release_while_waiting)
    with open_ledger(tmp_path, try_number=2, lock_timeout=1.0) as second:
        assert second.tries == 2  # the failed open wrote nothing


HOLDER = """
import sys
from famulor_provider.campaign.ledger import CampaignLedger

ledger = CampaignLedger.open(
    sys.argv[1], dag_id="campaign", run_id="manual__2025-01-31T09:00:00+00:00", task_id="send",
    map_index=-1, try_number=1, sender_id=12, template_id=7,
)
ledger.record_attempt("+14155550001")
ledger.record_outcome("+14155550001", "sent", message_id="m-1")
ledger.record_attempt("+14155550002")
print("in flight", flush=True)
sys.stdin.read()  # the send that never returns
"""


def test_a_retry_is_blocked_while_the_try_lives_and_resumes_after_sigkill(tmp_path):
    """A zombie try holds the ledger; once killed, the retry sees its send in flight as unknown."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "in flight"
        with pytest.raises(FamulorError, match="still running") as err:
            open_ledger(tmp_path, try_number=2, lock_timeout=0)
        assert ledger_file_path(tmp_path, **IDENTITY, map_index=-1) in str(err.value)

        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()

    with open_ledger(tmp_path, try_number=2, lock_timeout=0) as ledger:  # the kernel freed the lock
        assert ledger.state == {PHONE_A: "sent", PHONE_B: IN_FLIGHT}
        assert ledger.counts()["in_flight"] == 1
        assert not ledger.should_send(PHONE_A, resend_unknown=True)
        assert not ledger.should_send(PHONE_B)
        assert ledger.should_send(PHONE_B, resend_unknown=True)
    tries = [event for event in iter_ledger_events(ledger.path) if event["type"] == "try"]
    assert [t["try_number"] for t in tries] == [1, 2]
    assert tries[0]["pid"] == holder.pid
    record = list(read_campaign_ledger(ledger.path))[1]
    assert (record["recipient_phone"], record["outcome"]) == (PHONE_B, "unknown")
    assert "in flight" in record["error"]


# -- scale ------------------------------------------------------------------------------------------


def test_state_costs_about_100_bytes_per_recipient(tmp_path):
    """10,000 recipients here (tracemalloc is slow); benchmarks/campaign_memory.py measures 100,000."""
    count = 10_000
    path = Path(ledger_file_path(tmp_path, **IDENTITY, map_index=-1))
    path.parent.mkdir(parents=True)
    at = '"at":"2025-01-31T09:00:00.000+00:00"'
    with open(path, "w") as file:
        file.write(json.dumps({"type": "campaign", "format": 1, **IDENTITY, "map_index": -1}) + "\n")
        for n in range(count):
            phone = f"+1415{n:07d}"
            file.write(f'{{"type":"attempt","recipient_phone":"{phone}",{at}}}\n')
            outcome = "sent" if n % 10 else "refused"
            file.write(f'{{"type":"outcome","recipient_phone":"{phone}","outcome":"{outcome}",{at}}}\n')

    tracemalloc.start()
    try:
        ledger = open_ledger(tmp_path, try_number=2)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with ledger:
        assert ledger.counts() == {
            "sent": 9_000,
            "refused": 1_000,
            "rejected": 0,
            "unknown": 0,
            "in_flight": 0,
        }
    # 100,000 recipients at this rate stay far under the 50 MB budget.
    assert retained / count < 200, retained
    assert peak / count < 300, peak


# -- a second writer without the lock ----------------------------------------------------------------


def append_unlocked(path: str, text: str) -> None:
    """Append as a try on a host where flock does not reach would: no lock at all."""
    with open(path, "a", encoding="utf-8") as file:
        file.write(text)


def test_a_second_writer_without_the_lock_stops_further_attempts(tmp_path):
    ledger = open_ledger(tmp_path)
    ledger.record_attempt(PHONE_A)
    ledger.record_outcome(PHONE_A, "sent", message_id=1)
    other = {
        "type": "try",
        "try_number": 2,
        "hostname": "worker-b",
        "pid": 4242,
        "at": "2025-01-31T09:00:00Z",
    }
    append_unlocked(ledger.path, json.dumps(other) + "\n")

    with pytest.raises(FamulorLedgerConflictError, match=r"try 2 on host worker-b \(pid 4242\)") as err:
        ledger.record_attempt(PHONE_B)
    assert "sends nothing more" in str(err.value) and "later try resumes" in str(err.value)
    assert PHONE_B not in ledger.state
    assert not any(e.get("recipient_phone") == PHONE_B for e in iter_ledger_events(ledger.path))
    # Outcomes of sends already in flight are still recorded; attempts stay refused.
    ledger.record_outcome(PHONE_A, "sent", message_id=1)
    with pytest.raises(FamulorLedgerConflictError):
        ledger.record_attempt(PHONE_C)
    ledger.close()

    with open_ledger(tmp_path, try_number=3) as later:  # resumes from the ledger
        assert later.state == {PHONE_A: "sent"}
        later.record_attempt(PHONE_B)


def test_an_unreadable_foreign_write_is_named_another_process(tmp_path):
    with open_ledger(tmp_path) as ledger:
        append_unlocked(ledger.path, '{"type": "attem')  # a torn line of the other writer
        with pytest.raises(FamulorLedgerConflictError, match="during this try: another process"):
            ledger.record_attempt(PHONE_A)


def test_our_own_writes_never_look_foreign(tmp_path):
    with open_ledger(tmp_path) as ledger:
        for phone in (PHONE_A, PHONE_B, PHONE_C):
            ledger.record_attempt(phone)
            ledger.record_outcome(phone, "rejected" if phone == PHONE_B else "sent")
        assert ledger.counts()["rejected"] == 1
        with pytest.raises(FamulorError, match="already rejected"):
            ledger.record_attempt(PHONE_B)


# -- bad paths and permissions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "why"),
    [
        ("/proc/famulor-ledgers", "a parent folder cannot be created there"),
        ("/sys/famulor-ledgers", "permission denied"),
        ("FILE", "a part of it is a file, not a folder"),
    ],
)
def test_a_ledger_path_that_cannot_hold_a_ledger_is_a_validation_error(tmp_path, folder, why):
    if folder == "FILE":
        (tmp_path / "plain-file").write_text("not a folder")
        folder = str(tmp_path / "plain-file" / "ledgers")
    with pytest.raises(FamulorValidationError, match="Invalid ledger_path") as err:
        open_ledger(folder)
    assert why in str(err.value) and repr(folder) in str(err.value)
    assert "Nothing was sent" in str(err.value)


def test_files_are_0600_and_created_folders_0700_whatever_the_umask(tmp_path):
    (tmp_path / "existing").mkdir(mode=0o755)
    root = tmp_path / "existing" / "new" / "ledgers"
    old = os.umask(0o022)
    try:
        ledger = open_ledger(root)
    finally:
        os.umask(old)
    with ledger:
        path = Path(ledger.path)
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
        created = [path.parent, path.parent.parent, root, root.parent]
        assert [oct(p.stat().st_mode & 0o777) for p in created] == [oct(0o700)] * 4
        assert oct((tmp_path / "existing").stat().st_mode & 0o777) == oct(0o755)  # not ours: unchanged


def test_a_foreign_write_between_the_check_and_the_attempt_refuses_that_send(tmp_path, monkeypatch):
    with open_ledger(tmp_path) as ledger:
        now = ledger_module._now

        def now_while_another_writes() -> str:  # runs after the check, before the attempt is written
            monkeypatch.setattr(ledger_module, "_now", now)
            append_unlocked(ledger.path, '{"type":"try","try_number":5,"hostname":"worker-c","pid":7}\n')
            return now()

        monkeypatch.setattr(ledger_module, "_now", now_while_another_writes)
        with pytest.raises(FamulorLedgerConflictError, match=r"try 5 on host worker-c \(pid 7\)"):
            ledger.record_attempt(PHONE_A)
        assert ledger.state == {PHONE_A: "refused"}  # not sent: a later try sends it
    assert [e["type"] for e in iter_ledger_events(ledger.path)][-3:] == ["try", "attempt", "outcome"]
