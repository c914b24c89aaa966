"""pytest plugin (entry point ``famulor_sandbox``): the ``famulor_sandbox`` fixture and marker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from famulor_provider.testing.sandbox import FamulorSandbox


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "famulor_sandbox(**kwargs): keyword arguments for the famulor_sandbox fixture's FamulorSandbox, "
        "e.g. send_rate_limit=None to turn off the API's 5 sends/s limit",
    )


@pytest.fixture
def famulor_sandbox(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FamulorSandbox]:
    """A running ``FamulorSandbox`` with seed data, set as the ``famulor_default`` connection.

    It limits sends as the API does (5 per second); ``@pytest.mark.famulor_sandbox(send_rate_limit=None)``
    turns that off, and the marker's other keyword arguments go to ``FamulorSandbox`` too.
    """
    # Imported here: this plugin loads in every pytest run of everyone who installs the provider.
    from famulor_provider.testing.sandbox import FamulorSandbox

    marker = request.node.get_closest_marker("famulor_sandbox")
    if marker is not None and marker.args:
        raise pytest.UsageError("@pytest.mark.famulor_sandbox takes keyword arguments only")
    with FamulorSandbox(**({} if marker is None else marker.kwargs)) as sandbox:
        for name, value in sandbox.env().items():
            monkeypatch.setenv(name, value)
        yield sandbox
