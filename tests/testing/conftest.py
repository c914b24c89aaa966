"""The ``sandbox`` fixture of the sandbox's own tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from famulor_provider.testing import FamulorSandbox

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def sandbox() -> Iterator[FamulorSandbox]:
    with FamulorSandbox() as sb:
        yield sb
