"""Reply matching rules of ``choices``: compared after NFKC and case folding, without invisible
characters, variation selectors and skin tones, and without the spaces, punctuation, WhatsApp
formatting markers and emoji around the words."""

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
        ("yess", None),
        ("", None),
        ("!!!", None),
    ],
)
def test_match_choice(text: str, expected: str | None) -> None:
    assert match_choice(text, ("YES", "NO")) == expected


@pytest.mark.parametrize(
    "text", ["YES 👍", "Yes 🙂", "~yes~", "\uff59\uff45\uff53", "YES\u200b", "Yes\ufe0f"]
)
def test_everyday_spellings_of_yes_match(text: str) -> None:
    assert match_choice(text, ("YES", "NO")) == "YES"


def test_an_emoji_with_a_skin_tone_matches_the_plain_emoji() -> None:
    assert match_choice("👍🏽", ("👍", "👎")) == "👍"


@pytest.mark.parametrize("text", ["not yes", "yes no", "yesterday", "yes, but later"])
def test_other_words_make_another_answer(text: str) -> None:
    assert match_choice(text, ("YES", "NO")) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*YES*", "YES"),
        ("_no_", "NO"),
        ("```yes```", "YES"),
        ("`No` 🙏🏼", "NO"),
        ("👍 Yes!", "YES"),
        ("\u200eyes\u200f", "YES"),  # direction marks
        ("👎", None),  # an emoji alone is compared as the emoji
        ("yes 👍 no", None),  # an emoji between words is kept
    ],
)
def test_markers_emoji_and_invisible_characters_around_the_words(text: str, expected: str | None) -> None:
    assert match_choice(text, ("YES", "NO")) == expected


def test_choice_returned_as_written_and_inner_punctuation_counts() -> None:
    assert match_choice("ok, later", ["Ok, later!", "no"]) == "Ok, later!"
    assert match_choice("ok later", ["Ok, later!"]) is None
    assert match_choice("STRASSE", ["straße"]) == "straße"  # casefold, not lower


def test_normalize_reply() -> None:
    assert normalize_reply("  «Ja!» ") == "ja"
    assert normalize_reply("Yes, but later.") == "yes, but later"
    assert normalize_reply("*\uff2a\uff41* 👍🏽") == "ja"
    assert normalize_reply(" 👍🏽\ufe0f ") == "👍"


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
        (["*~_`"], "not a reply"),
        (["YES", "*yes* 👍"], "same answer"),
        ([], "is empty"),
    ],
)
def test_bad_choices(choices: Any, text: str) -> None:
    with pytest.raises(FamulorValidationError, match=text) as err:
        check_choices(choices)
    assert err.value.field == "choices"
