"""The inbound example DAG's task logs counts and masked numbers at INFO, names and texts at DEBUG."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("airflow.sdk", reason="asset watchers: Airflow 3")

EXAMPLE = Path(__file__).resolve().parents[2] / "example_dags" / "famulor_whatsapp_inbound.py"


class ByAsset:
    """A context accessor (``triggering_asset_events``, ``inlet_events``) of one asset (not a dict:
    Airflow 3.1's ``Asset`` does not hash)."""

    def __init__(self, asset: Any, value: Any) -> None:
        self.asset = asset
        self.value = value

    def __getitem__(self, asset: Any) -> Any:
        assert asset.name == self.asset.name
        return self.value


class AssetEvents:
    """``inlet_events[asset]``: the asset's events, ``after(when)`` those after a time."""

    def __init__(self, expected_after: datetime, events: list[Any]) -> None:
        self.expected_after = expected_after
        self.events = events

    def after(self, when: datetime) -> list[Any]:
        assert when == self.expected_after  # the run's run_after
        return self.events


def _message(n: int) -> dict[str, Any]:
    return {
        "conversation_id": f"c{n}",
        "sender_phone": "+4930901820",
        "sender_name": "Acme",
        "customer_phone": f"+491511234560{n}",
        "customer_name": f"Ada Lovelace {n}",
        "text": f"my order number is 77{n}",
        "message_index": n,
        "variables": None,
        "dedupe_key": f"c{n}:{n}",
    }


def test_names_texts_and_full_numbers_only_at_debug(caplog: pytest.LogCaptureFixture):
    from airflow_harness import _load_dag

    dag = _load_dag(EXAMPLE, "famulor_whatsapp_inbound")  # parsed by Airflow's DagBag
    callable_ = dag.get_task("handle_messages").python_callable
    inbound = callable_.__globals__["inbound"]
    events = [SimpleNamespace(extra={"payload": _message(n)}) for n in range(3)]
    run_after = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    late = [*events[1:], SimpleNamespace(extra={"manual": True})]  # and an event not of the trigger

    with caplog.at_level(logging.DEBUG):
        handled = callable_(
            triggering_asset_events=ByAsset(inbound, events[:2]),
            inlet_events=ByAsset(inbound, AssetEvents(run_after, late)),
            dag_run=SimpleNamespace(run_after=run_after),
        )
    # The event Airflow left out of the run (#56050) is taken from inlet_events; each message once.
    assert handled == ["c0:0", "c1:1", "c2:2"]
    info = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    debug = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert "3 message(s) in this run" in info
    from famulor_provider.privacy import mask_phone

    assert mask_phone("+4930901820") in info
    for message in map(_message, range(3)):
        for personal in (message["customer_phone"], message["customer_name"], message["text"]):
            assert personal not in info
        assert mask_phone(message["customer_phone"]) in info
        assert message["customer_name"] in debug and message["text"] in debug
