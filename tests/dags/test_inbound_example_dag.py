"""The inbound example DAG's task logs counts and masked numbers at INFO, names and texts at DEBUG."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from famulor_fixtures import set_sandbox_conn

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


SENDER = "+4930901820"  # seed sender 21


def _customer(n: int) -> tuple[str, str, str]:
    return f"+491511234560{n}", f"Ada Lovelace {n}", f"my order number is 77{n}"


def _trigger_events(sandbox: Any) -> list[dict[str, Any]]:
    """The events the trigger fires for three customers' messages (its real poller)."""
    from famulor_provider.conversations.inbound_poll import InboundPoller
    from famulor_provider.hooks.famulor import FamulorHook

    async def poll() -> list[dict[str, Any]]:
        poller = InboundPoller(FamulorHook(), sender_phone=SENDER)
        poller.cursor = await poller.take_baseline()
        for n in range(3):
            phone, name, text = _customer(n)
            sandbox.receive(SENDER, phone, text, customer_name=name)
        return [event async for update in poller.poll() for event in update.events()]

    return asyncio.run(poll())


def test_names_texts_and_full_numbers_only_at_debug(
    caplog: pytest.LogCaptureFixture, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch
):
    from airflow_harness import _load_dag

    set_sandbox_conn(monkeypatch, famulor_sandbox, extra={"poll_requests_per_minute": 600_000})
    dag = _load_dag(EXAMPLE, "famulor_whatsapp_inbound")  # parsed by Airflow's DagBag
    callable_ = dag.get_task("handle_messages").python_callable
    inbound = callable_.__globals__["inbound"]
    payloads = sorted(_trigger_events(famulor_sandbox), key=lambda p: p["conversation_id"])
    events = [SimpleNamespace(extra={"from_trigger": True, "payload": p}) for p in payloads]
    run_after = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    late = [*events[1:], SimpleNamespace(extra={"manual": True})]  # and an event not of the trigger

    with caplog.at_level(logging.DEBUG):
        handled = callable_(
            triggering_asset_events=ByAsset(inbound, events[:2]),
            inlet_events=ByAsset(inbound, AssetEvents(run_after, late)),
            dag_run=SimpleNamespace(run_after=run_after),
        )
    # The event Airflow left out of the run (#56050) is taken from inlet_events; each message once.
    assert handled == [p["dedupe_key"] for p in payloads]
    info = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    debug = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert "3 message(s) in this run" in info
    from famulor_provider.privacy import mask_phone

    assert mask_phone(SENDER) in info
    for phone, name, text in map(_customer, range(3)):
        for personal in (phone, name, text):
            assert personal not in info
        assert mask_phone(phone) in info
        assert f"{name} wrote: {text!r}" in debug
