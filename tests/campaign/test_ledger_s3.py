"""The campaign ledger on S3 (moto's server on 127.0.0.1, through Airflow's AWS connection):
the object log, fencing a second try, and the setups refused before any send."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from s3_server import S3Proxy, S3Server, aws_conn_env

from famulor_provider.campaign.ledger import (
    IN_FLIGHT,
    CampaignLedger,
    iter_ledger_events,
    ledger_file_path,
    open_store,
    read_campaign_ledger,
    summarize,
)
from famulor_provider.exceptions import (
    FamulorLedgerConflictError,
    FamulorLedgerMissingError,
    FamulorValidationError,
)

pytest.importorskip("airflow.providers.amazon", reason="needs airflow-provider-famulor[amazon]")

IDENTITY = {"dag_id": "campaign", "run_id": "manual__2025-01-31T09:00:00+00:00", "task_id": "send"}
BUCKET = "famulor-ledgers"
LEDGER_PATH = f"s3://{BUCKET}/prod/ledgers"
PHONE_A, PHONE_B, PHONE_C = "+14155550001", "+14155550002", "+14155550003"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with S3Server() as server:
        server.create_bucket(BUCKET)
        for name, value in aws_conn_env(server.url).items():
            monkeypatch.setenv(name, value)
        yield server


def open_ledger(ledger_path: str = LEDGER_PATH, *, try_number: int = 1, **kwargs: Any) -> CampaignLedger:
    return CampaignLedger.open(
        ledger_path, **IDENTITY, map_index=-1, try_number=try_number, sender_id=12, template_id=7, **kwargs
    )


def keys(s3: S3Server) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET)
    return [item["Key"] for item in listing.get("Contents", [])]


FOLDER = "prod/ledgers/campaign/manual__2025-01-31T09%3A00%3A00%2B00%3A00/send/"  # the task instance's


def test_attempts_and_outcomes_are_objects_read_back_by_the_next_try(s3: S3Server) -> None:
    with open_ledger() as ledger:
        assert ledger.path == f"s3://{BUCKET}/{FOLDER}"
        assert ledger.path == ledger_file_path(LEDGER_PATH, **IDENTITY, map_index=-1)
        ledger.record_attempt(PHONE_A)
        ledger.record_outcome(PHONE_A, "sent", message_id=1, status="queued")
        ledger.record_attempt(PHONE_B)  # written with A's outcome: one object
        ledger.record_outcome(PHONE_B, "refused", error_code="UNKNOWN_ERROR", error="x" * 1000)
        ledger.record_attempt(PHONE_C)
        ledger.record_outcome(PHONE_C, "sent", message_id=3)
        # header + try, the probe, 3 attempts (A's outcome with B's), B's refusal
        assert ledger.store.writes == 6
        ledger.flush()  # C's outcome
        assert ledger.store.writes == 7

    assert keys(s3) == [f"{FOLDER}{n:010d}.jsonl" for n in range(6)]
    body = s3.client().get_object(Bucket=BUCKET, Key=f"{FOLDER}0000000002.jsonl")["Body"].read()
    assert [json.loads(line)["type"] for line in body.splitlines()] == ["outcome", "attempt"]

    with open_ledger(try_number=2) as ledger:
        assert ledger.state == {PHONE_A: "sent", PHONE_B: "refused", PHONE_C: "sent"}
        assert ledger.tries == 2
        assert ledger.should_send(PHONE_B) and not ledger.should_send(PHONE_A)
    events = list(iter_ledger_events(ledger.path))
    assert [e["type"] for e in events] == [
        "campaign", "try", "attempt", "outcome", "attempt", "outcome", "attempt", "outcome", "try",
    ]  # fmt: skip
    assert (events[0]["dag_id"], events[0]["format"], events[-1]["try_number"]) == ("campaign", 1, 2)
    records = list(read_campaign_ledger(ledger.path))
    assert [(r["recipient_phone"], r["outcome"], r["message_id"]) for r in records] == [
        (PHONE_A, "sent", 1),
        (PHONE_B, "refused", None),
        (PHONE_C, "sent", 3),
    ]
    assert len(records[1]["error"]) == 300
    assert summarize(records)["sent"] == 2


def test_a_sent_outcome_not_yet_written_leaves_the_recipient_unknown(s3: S3Server) -> None:
    ledger = open_ledger()
    ledger.record_attempt(PHONE_A)
    ledger.record_outcome(PHONE_A, "sent", message_id=1)  # held for the next write
    # The try dies here (no close, no flush): the next one must not send A again.
    with open_ledger(try_number=2) as retry:
        assert retry.state == {PHONE_A: IN_FLIGHT}
        assert not retry.should_send(PHONE_A)
    [record] = read_campaign_ledger(retry.path)
    assert record["outcome"] == "unknown" and "in flight" in record["error"]


def test_a_later_try_that_finds_no_ledger_sends_nothing(s3: S3Server) -> None:
    with pytest.raises(FamulorLedgerMissingError, match="storage every worker sees"):
        open_ledger(try_number=2)
    assert keys(s3) == []  # and wrote nothing
    with open_ledger(try_number=2, allow_new_ledger=True) as ledger:
        assert ledger.header is not None


def test_a_second_try_fences_out_the_first_before_its_next_send(s3: S3Server) -> None:
    first = open_ledger()
    first.record_attempt(PHONE_A)
    first.record_outcome(PHONE_A, "sent", message_id=1)
    first.record_attempt(PHONE_B)  # in flight when the scheduler gave up on this try

    second = open_ledger(try_number=2)  # takes the log's next position
    assert second.state == {PHONE_A: "sent", PHONE_B: IN_FLIGHT}  # A's outcome came with B's attempt

    with pytest.raises(FamulorLedgerConflictError, match=r"try 2 on host .+ \(pid \d+\)") as err:
        first.record_attempt(PHONE_C)
    assert "sends nothing more" in str(err.value) and first.path in str(err.value)
    assert PHONE_C not in first.state
    with pytest.raises(FamulorLedgerConflictError):  # and nothing more, ever
        first.record_outcome(PHONE_B, "unknown")
    first.close()  # does not write what it held back either

    second.record_attempt(PHONE_C)
    second.record_outcome(PHONE_C, "sent", message_id=3)
    second.close()
    records = {r["recipient_phone"]: r["outcome"] for r in read_campaign_ledger(second.path)}
    assert records == {PHONE_A: "sent", PHONE_B: "unknown", PHONE_C: "sent"}
    attempts_of_c = [e for e in iter_ledger_events(second.path) if e.get("recipient_phone") == PHONE_C]
    assert [e["type"] for e in attempts_of_c] == ["attempt", "outcome"]  # only the second try's


def test_of_two_tries_that_read_the_same_log_only_one_writes(s3: S3Server) -> None:
    path = ledger_file_path(LEDGER_PATH, **IDENTITY, map_index=-1)
    first, second = open_store(path), open_store(path)
    assert list(first.read()) == list(second.read()) == []  # both saw an empty log
    first.append([b'{"type":"try","try_number":1,"hostname":"pod-a","pid":1}\n'])
    with pytest.raises(FamulorLedgerConflictError, match=r"try 1 on host pod-a \(pid 1\)"):
        second.append([b'{"type":"try","try_number":1,"hostname":"pod-b","pid":2}\n'])
    assert second.fenced
    assert [e["hostname"] for e in iter_ledger_events(path)] == ["pod-a"]


# -- setups refused before any send ------------------------------------------------------------------


def test_a_missing_bucket_names_the_fix(s3: S3Server) -> None:
    with pytest.raises(FamulorValidationError, match="Invalid ledger_path") as err:
        open_ledger("s3://no-such-ledger-bucket/ledgers")
    assert "'no-such-ledger-bucket' does not exist" in str(err.value) and "Create it" in str(err.value)


def test_credentials_s3_does_not_know_name_the_connection(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in aws_conn_env(s3.url, key="AKIAUNKNOWN", secret="wrong").items():
        monkeypatch.setenv(name, value)
    with s3.iam_enforced(), pytest.raises(FamulorValidationError, match="Invalid ledger_conn_id") as err:
        open_ledger()
    assert "refused the credentials of the connection 'aws_default'" in str(err.value)
    assert "InvalidAccessKeyId" in str(err.value) and "wrong" not in str(err.value)


def test_credentials_that_may_not_write_name_the_permission(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto names the listing s3:ListObjectsV2 (AWS: s3:ListBucket).
    key, secret = s3.user_with("reader", ["s3:ListBucket", "s3:ListObjectsV2", "s3:GetObject"])
    for name, value in aws_conn_env(s3.url, conn_id="ledger_reader", key=key, secret=secret).items():
        monkeypatch.setenv(name, value)
    with s3.iam_enforced(), pytest.raises(FamulorValidationError, match="Invalid ledger_conn_id") as err:
        open_ledger(conn_id="ledger_reader")
    text = str(err.value)
    assert "'ledger_reader' may not s3:PutObject" in text and "AccessDenied" in text
    assert "s3:ListBucket, s3:GetObject and s3:PutObject" in text and "no delete or overwrite" in text
    assert keys(s3) == []


def test_a_store_that_ignores_if_none_match_is_refused_by_the_probe(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with S3Proxy(s3.url, strip_if_none_match=True) as proxy:
        for name, value in aws_conn_env(proxy.url).items():
            monkeypatch.setenv(name, value)
        with pytest.raises(FamulorValidationError, match="Invalid ledger_path") as err:
            open_ledger()
        assert "ignores conditional writes" in str(err.value) and "If-None-Match" in str(err.value)
        assert "Nothing was sent" in str(err.value)
        assert proxy.requests["PUT"] == 2  # the try's object, then the probe

        with pytest.raises(FamulorValidationError, match="ignores conditional writes"):  # every try
            open_ledger(try_number=2)


def test_without_the_amazon_provider_the_error_names_the_extra(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "airflow.providers.amazon.aws.hooks.s3", None)
    with pytest.raises(FamulorValidationError, match=r"airflow-provider-famulor\[amazon\]"):
        open_ledger()


# -- grouping: the sends that go out together share one write ------------------------------------------


def fast_campaign(phones: list[str], try_number: int = 1) -> dict[str, Any]:
    """A campaign at 20 sends/s through ``execute``, the connections from the environment."""
    from types import SimpleNamespace

    from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator

    operator = SendWhatsAppCampaignOperator(
        task_id="send",
        sender_id=12,
        template_id=1201,
        recipients=[{"recipient_phone": phone} for phone in phones],
        ledger_path=LEDGER_PATH,
        max_sends_per_second=20,
    )
    ti = SimpleNamespace(**IDENTITY, map_index=-1, try_number=try_number)
    return dict(operator.execute({"ti": ti}))  # type: ignore[arg-type]


@pytest.fixture
def slow_s3(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Proxy, Any]]:
    """100 ms per S3 request, and the sandbox without its limit: at 20 sends/s (one every 50 ms)
    one write per send could not keep up."""
    from famulor_provider.testing import FamulorSandbox

    with S3Proxy(s3.url, delay=0.1) as proxy, FamulorSandbox(send_rate_limit=None) as sandbox:
        for name, value in {**aws_conn_env(proxy.url), **sandbox.env()}.items():
            monkeypatch.setenv(name, value)
        yield proxy, sandbox


def objects(s3: S3Server) -> Iterator[list[dict[str, Any]]]:
    client = s3.client()
    for key in keys(s3):
        yield [
            json.loads(line) for line in client.get_object(Bucket=BUCKET, Key=key)["Body"].read().splitlines()
        ]


def test_at_a_pace_faster_than_a_write_the_attempts_of_sends_that_go_out_together_share_one(
    s3: S3Server, slow_s3: tuple[S3Proxy, Any]
) -> None:
    proxy, sandbox = slow_s3
    phones = [f"+1415800{n:04d}" for n in range(40)]

    summary = fast_campaign(phones)

    assert summary["sent"] == 40 and sorted(row["recipient_phone"] for row in sandbox.ledger) == phones
    assert proxy.requests["PUT"] < 30  # 40 sends, plus the header, the probe and the last outcomes
    in_flight: set[str] = set()
    group_sizes = []
    for events in objects(s3):
        attempts = [e["recipient_phone"] for e in events if e["type"] == "attempt"]
        in_flight -= {e["recipient_phone"] for e in events if e["type"] == "outcome"}
        in_flight |= set(attempts)
        group_sizes.append(len(attempts))
        assert len(in_flight) <= 16  # never more ahead than the in-flight window
    assert max(group_sizes) >= 2 and sum(group_sizes) == 40


def test_a_paused_try_never_sends_the_rest_of_its_group_after_another_took_over(
    s3: S3Server, slow_s3: tuple[S3Proxy, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's attempts are written ahead of their sends. A try paused with some of them still
    to send (a stopped pod) while another try takes over must not send them when it wakes up."""
    from famulor_provider.campaign import runner as campaign_runner

    _, sandbox = slow_s3
    monkeypatch.setattr(campaign_runner, "LEASE_SECONDS", 0.3)
    waiting: list[str] = []  # the group's sends not yet made when the other try took over
    wait_for_hold = campaign_runner.CampaignRunner._wait_for_hold

    def pause_then_take_over(self: Any) -> None:
        if not waiting and len(self.reserved) >= 2:
            waiting.extend(r["recipient_phone"] for r in self.reserved)
            open_ledger(try_number=2).close()  # the next try: its try line takes the next position
            time.sleep(0.4)  # the pause, longer than the lease
        wait_for_hold(self)

    monkeypatch.setattr(campaign_runner.CampaignRunner, "_wait_for_hold", pause_then_take_over)
    phones = [f"+1415700{n:04d}" for n in range(40)]

    with pytest.raises(FamulorLedgerConflictError, match="try 2"):
        fast_campaign(phones)

    assert len(waiting) >= 2, "no group was written ahead of its sends"
    sent = {row["recipient_phone"] for row in sandbox.ledger}
    assert sent and not sent & set(waiting)
    folder = ledger_file_path(LEDGER_PATH, **IDENTITY, map_index=-1)
    records = {r["recipient_phone"]: r["outcome"] for r in read_campaign_ledger(folder)}
    assert {records[phone] for phone in waiting} == {"unknown"}  # never sent by any later try either


def test_a_later_try_reads_the_newest_checkpoint_and_the_objects_after_it(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from famulor_provider.campaign.stores import objects as object_log

    monkeypatch.setattr(object_log, "CHECKPOINT_EVERY", 4)
    phones = [f"+1415900{n:04d}" for n in range(9)]
    with open_ledger() as ledger:
        for phone in phones:  # position 0: header and try; then one per attempt (the probe writes none)
            ledger.record_attempt(phone)
            ledger.record_outcome(phone, "sent", message_id=phone[-4:])
    every_object = [key for key in keys(s3) if "/checkpoints/" not in key]
    assert len(every_object) == 11  # header + try, 9 attempts, the last outcome
    assert [key.removeprefix(FOLDER) for key in keys(s3) if "/checkpoints/" in key] == [
        "checkpoints/0000000004.jsonl",
        "checkpoints/0000000008.jsonl",
    ]
    client = s3.client()
    whole = b"".join(client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in every_object)
    checkpoint = client.get_object(Bucket=BUCKET, Key=f"{FOLDER}checkpoints/0000000008.jsonl")["Body"].read()
    assert whole.startswith(checkpoint) and checkpoint.count(b"\n") == 1 + 1 + 7 + 6  # objects 0-7

    with S3Proxy(s3.url) as proxy:
        monkeypatch.setenv(*next(iter(aws_conn_env(proxy.url).items())))
        with open_ledger(try_number=2) as retry:
            assert retry.state == dict.fromkeys(phones, "sent") and retry.tries == 2
        # The checkpoint and the 3 objects after it, not all 11: 4 GETs, 2 LISTs.
        assert (proxy.requests["GET"], proxy.requests["LIST"]) == (4, 2)
        events = list(iter_ledger_events(retry.path))
    assert events[:-1] == [json.loads(line) for line in whole.splitlines()]  # the same lines, in order
    assert events[-1]["type"] == "try" and events[-1]["try_number"] == 2
