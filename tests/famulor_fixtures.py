"""Test data and helpers shared by the hook, operator, sensor and trigger tests.

Importable as ``famulor_fixtures`` (``conftest.py`` puts ``tests/`` on ``sys.path``); the fixtures
that go with them (``sleeps``, ``async_sleeps``, ``wrong_key``) live in ``conftest.py``.
Nothing here imports Airflow.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from famulor_provider.testing import SEED_SENDERS

KEY = "sk-test-4f1c9a77e2"
"""The API key of the requests-mock tests' connection."""
BASE = "https://app.famulor.de/api"
SENDERS_PATH = "/api/user/whatsapp/senders"
"""The senders path as the sandbox records it."""
PHONE = "+4915112345678"
"""A valid recipient."""


def api_sender(seed: dict[str, Any]) -> dict[str, Any]:
    """A sender as the API (and the sandbox) lists it: the seed plus ``messaging_limit_formatted``."""
    limit = seed["messaging_limit"]
    return {**seed, "messaging_limit_formatted": "Unlimited" if limit is None else f"{limit:,} / 24hr"}


SENDERS: list[dict[str, Any]] = [api_sender(s) for s in SEED_SENDERS]
"""Every seed sender as the API lists it: 12 online GREEN 10,000; 15 online GREEN unlimited;
21 online YELLOW 2,000; 27 online RED 250; 31 offline GREEN 100,000; 33 connecting unrated 250."""
ONLINE_GREEN = SENDERS[:2]
"""Senders 12 and 15: what the requests-mock tests answer."""


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str = "famulor_default", **fields: Any) -> None:
    """Define a ``famulor`` connection with the key ``KEY`` (no host: the default base URL ``BASE``)."""
    value = {"conn_type": "famulor", "password": KEY, **fields}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))


def set_sandbox_conn(monkeypatch: pytest.MonkeyPatch, sandbox: Any, **changes: Any) -> None:
    """Redefine ``famulor_default`` as the sandbox's connection with some fields changed,
    e.g. ``password="not-the-key"`` or ``extra={"timeout": 0.2, "max_retries": 0}``."""
    conn = json.loads(sandbox.connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_FAMULOR_DEFAULT", json.dumps({**conn, **changes}))


def sender_requests(sandbox: Any) -> list[Any]:
    """The sandbox's ``GET .../senders`` requests."""
    return [r for r in sandbox.requests if r.path == SENDERS_PATH]


def posts(sandbox: Any) -> list[Any]:
    """The sandbox's POST requests (the sends)."""
    return [r for r in sandbox.requests if r.method == "POST"]
