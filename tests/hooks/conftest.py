"""Fixtures of the hook's transport tests (real servers on loopback)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from loopback_servers import DEADLINE, famulor_connection

from famulor_provider.hooks.famulor import FamulorHook


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries and sends do not sleep."""

    async def no_sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr(FamulorHook, "sleep", staticmethod(lambda seconds: None))
    monkeypatch.setattr(FamulorHook, "async_sleep", staticmethod(no_sleep))
    # A pacer of the hook's own class (whatever its interface) with no gap between sends.
    monkeypatch.setattr(FamulorHook, "send_pacer", type(FamulorHook.send_pacer)(0.0))


@pytest.fixture
def hook_for(airflow_conn: Callable[..., str]) -> Callable[..., FamulorHook]:
    """``hook_for(url, max_retries=0, verify_ssl=False)``: a hook on a connection to ``url`` whose
    ``timeout`` is ``DEADLINE``."""

    def make(url: str, *, max_retries: int = 0, verify_ssl: bool = False) -> FamulorHook:
        fields = famulor_connection(url, timeout=DEADLINE, max_retries=max_retries, verify_ssl=verify_ssl)
        airflow_conn("famulor_default", **fields)
        return FamulorHook()

    return make
