"""The webhook assets' names and dedupe keys: what DAGs and the receiver agree on."""

from __future__ import annotations

import pytest
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

from famulor_provider.webhooks.assets import (
    EXTRA_DEDUPE_KEY,
    EXTRA_PAYLOAD,
    conversation_ended_asset,
    conversation_ended_dedupe_key,
    message_status_asset,
    message_status_dedupe_key,
)


def test_asset_names_per_connection() -> None:
    assert message_status_asset().uri == "famulor.famulor_default.message_status"
    assert conversation_ended_asset("famulor_eu").uri == "famulor.famulor_eu.conversation_ended"
    if AIRFLOW_V_3_0_PLUS:
        from airflow.sdk import Asset

        assert conversation_ended_asset("famulor_eu").name == "famulor.famulor_eu.conversation_ended"
        assert isinstance(message_status_asset(), Asset)
        assert message_status_asset() == Asset("famulor.famulor_default.message_status")


def test_dedupe_keys() -> None:
    assert message_status_dedupe_key({"whatsapp_message_id": 1001, "status": "read"}) == "1001:read"
    assert conversation_ended_dedupe_key({"conversation_id": "8d0f-77"}) == "8d0f-77:ended"
    assert (EXTRA_PAYLOAD, EXTRA_DEDUPE_KEY) == ("payload", "dedupe_key")


def test_bad_conn_id() -> None:
    with pytest.raises(ValueError, match="conn_id must be a non-empty string"):
        message_status_asset("")
