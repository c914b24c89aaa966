"""pytest plugin (entry point ``famulor_sandbox``): the ``famulor_sandbox`` fixture."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from famulor_provider.testing.sandbox import FamulorSandbox


@pytest.fixture
def famulor_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[FamulorSandbox]:
    """A running ``FamulorSandbox`` with seed data, set as the ``famulor_default`` connection."""
    # Imported here: this plugin loads in every pytest run of everyone who installs the provider.
    from famulor_provider.testing.sandbox import FamulorSandbox

    with FamulorSandbox() as sandbox:
        for name, value in sandbox.env().items():
            monkeypatch.setenv(name, value)
        yield sandbox
