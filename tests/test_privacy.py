from __future__ import annotations

import pytest

from famulor_provider.privacy import mask_phone, phone_for_log


@pytest.mark.parametrize(
    ("phone", "masked"),
    [("+4915112345623", "+49151****23"), ("+14155551234", "+14155****34"), ("+4930", "****"), (None, "****")],
)
def test_mask_phone(phone, masked):
    assert mask_phone(phone) == masked


def test_phone_for_log_masks_by_default_and_obeys_the_switch(monkeypatch):
    monkeypatch.delenv("AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS", raising=False)
    assert phone_for_log("+4915112345623") == "+49151****23"
    monkeypatch.setenv("AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS", "true")
    assert phone_for_log("+4915112345623") == "+4915112345623"
