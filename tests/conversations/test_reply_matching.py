"""Reply matching rules of ``choices``: case, spaces and punctuation around a reply are ignored."""

from __future__ import annotations

from typing import Any

import pytest

from famulor_provider.exceptions import FamulorValidationError
from famulor_provider.models import check_choices, match_choice, normalize_reply


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("YES", "YES"),
        ("yes", "YES"),
        ("  Yes!  ", "YES"),
        ("¡yes!", "YES"),
        ("“Yes.”", "YES"),
        ("no...", "NO"),
        ("\tNO\n", "NO"),
        ("Yes, but later", None),
        ("y-e-s", None),
        ("yes 👍", None),
        ("yess", None),
        ("", None),
        ("!!!", None),
    ],
)
def test_match_choice(text: str, expected: str | None) -> None:
    assert match_choice(text, ("YES", "NO")) == expected


def test_choice_returned_as_written_and_inner_punctuation_counts() -> None:
    assert match_choice("ok, later", ["Ok, later!", "no"]) == "Ok, later!"
    assert match_choice("ok later", ["Ok, later!"]) is None
    assert match_choice("STRASSE", ["straße"]) == "straße"  # casefold, not lower


def test_normalize_reply() -> None:
    assert normalize_reply("  «Ja!» ") == "ja"
    assert normalize_reply("Yes, but later.") == "yes, but later"


@pytest.mark.parametrize(
    ("choices", "expected"),
    [(None, None), ("", None), (["YES", "NO"], ("YES", "NO")), ("YES, NO", ("YES", "NO")), ("['A']", ("A",))],
)
def test_check_choices(choices: Any, expected: Any) -> None:
    assert check_choices(choices) == expected


@pytest.mark.parametrize(
    ("choices", "text"),
    [
        (["YES", "yes!"], "same answer"),
        (["YES", 1], "not a reply"),
        (["?!"], "not a reply"),
        ([], "is empty"),
    ],
)
def test_bad_choices(choices: Any, text: str) -> None:
    with pytest.raises(FamulorValidationError, match=text) as err:
        check_choices(choices)
    assert err.value.field == "choices"
