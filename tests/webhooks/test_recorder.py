"""The event recorder: concurrent webhooks share transactions, each caller returns once committed."""

from __future__ import annotations

import threading

import pytest
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS

if not AIRFLOW_V_3_1_PLUS:
    pytest.skip("the receiver runs in the Airflow 3.1+ api-server", allow_module_level=True)

from delivery_receipts import stored_extras

from famulor_provider.webhooks import recorder as recorder_module
from famulor_provider.webhooks.recorder import EventRecorder


def event_keys(name: str) -> list[str]:
    return sorted(extra["dedupe_key"] for extra in stored_extras(name))


def test_concurrent_events_are_committed_in_shared_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    real_write = recorder_module.write

    def counting_write(batch: list) -> None:
        real_write(batch)
        batches.append(len(batch))

    monkeypatch.setattr(recorder_module, "write", counting_write)
    recorder = EventRecorder(max_batch=16)
    committed: list[str] = []
    barrier = threading.Barrier(40)

    def one(n: int) -> None:
        barrier.wait()
        recorder.record("famulor.rec.message_status", {"payload": {"n": n}, "dedupe_key": f"{n}:sent"})
        committed.append(f"{n}:sent")  # only after record returned: the event is in the database

    threads = [threading.Thread(target=one, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (
        sorted(committed)
        == event_keys("famulor.rec.message_status")
        == sorted(f"{n}:sent" for n in range(40))
    )
    assert sum(batches) == 40
    assert len(batches) < 40 and max(batches) <= 16  # shared transactions, none over the cap


def test_a_failed_transaction_fails_every_caller_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    def broken(batch: list) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(recorder_module, "write", broken)
    with pytest.raises(OperationalError):
        EventRecorder().record("famulor.rec2.message_status", {"payload": {}, "dedupe_key": "1:sent"})
    assert event_keys("famulor.rec2.message_status") == []


def test_a_caller_gives_up_after_wait_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(recorder_module, "write", lambda batch: release.wait(10))
    try:
        with pytest.raises(TimeoutError, match=r"not committed within 0\.2 s"):
            EventRecorder(wait_seconds=0.2).record("famulor.rec3.message_status", {"dedupe_key": "x"})
    finally:
        release.set()
