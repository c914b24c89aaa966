from __future__ import annotations

import re

import pytest

from famulor_provider.privacy import mask_phone, phone_for_log


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+4915112345623", "+49151****23"),  # Germany, mobile: 12 digits after the code, 7 hidden
        ("+4930901820", "+4930****20"),  # Germany, Berlin landline: 8 digits, 4 hidden
        ("+14155551234", "+1415****34"),  # North America: 10 digits, 5 hidden
        ("+447911123456", "+44791****56"),  # United Kingdom: 10 digits, 5 hidden
        ("+79161234567", "+7916****67"),  # Russia (1-digit code): 10 digits, 5 hidden
        ("+35312345678", "+35312****78"),  # Ireland (3-digit code): 8 digits, 4 hidden
        ("+3545551234", "+3545****34"),  # Iceland: 7 digits, 4 hidden
        ("+97150123456", "+97150****56"),  # United Arab Emirates: 8 digits, 4 hidden
        ("+4412345678", "+4412****78"),  # 8 digits, 4 hidden
        ("+49 151 1234 5623", "+49151****23"),  # spaces do not count
        ("+4930", "****"),
        ("+4930123", "****"),  # too few digits after the code to mask
        (None, "****"),
        ("", "****"),
    ],
)
def test_mask_phone(phone, masked):
    assert mask_phone(phone) == masked


@pytest.mark.parametrize(
    ("phone", "code"),
    [
        ("+4915112345623", "49"),
        ("+4930901820", "49"),
        ("+14155551234", "1"),
        ("+79161234567", "7"),
        ("+35312345678", "353"),
        ("+97150123456", "971"),
        ("+8613800138000", "86"),
        ("+85291234567", "852"),
        ("+5511987654321", "55"),
        ("+2348031234567", "234"),
    ],
)
def test_a_masked_number_hides_at_least_half_of_its_digits_after_the_country_code(phone, code):
    masked = mask_phone(phone)
    digits = phone[1 + len(code) :]
    shown = masked.removeprefix("+" + code).replace("****", "")
    assert masked.startswith("+" + code) and masked.endswith(phone[-2:])
    assert len(shown) <= len(digits) / 2
    assert digits.startswith(shown[:-2]) and re.fullmatch(r"\+\d+\*{4}\d{2}", masked)


@pytest.mark.parametrize(
    ("text", "masked"),
    [("415555123402", "4155****02"), ("+49 15123458x", "+49 ****8x"), ("12345", "****")],
)
def test_text_that_is_not_a_number_hides_at_least_half_of_it(text, masked):
    assert mask_phone(text) == masked


def test_phone_for_log_masks_by_default_and_obeys_the_switch(monkeypatch):
    monkeypatch.delenv("AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS", raising=False)
    assert phone_for_log("+4915112345623") == "+49151****23"
    monkeypatch.setenv("AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS", "true")
    assert phone_for_log("+4915112345623") == "+4915112345623"
