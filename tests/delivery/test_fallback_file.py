"""The delivery report's recipients file: the campaign's format, private, atomic, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from famulor_provider.campaign.delivery import default_report_path, fallback_rows, write_recipients_file
from famulor_provider.campaign.recipients import plan_recipients
from famulor_provider.exceptions import FamulorValidationError

SOURCE = [
    {"recipient_phone": "+49 151 0000 0001", "recipient_name": "Ada", "variables": {"1": "A-1"}},
    {"recipient_phone": "+4915100000002", "variables": {"1": "A-2"}},
    {"recipient_phone": "+4915100000001", "recipient_name": "Ada again"},  # a duplicate: the first wins
]


def test_the_file_is_what_the_campaign_reads_with_names_and_variables(tmp_path: Path) -> None:
    path = tmp_path / "new" / "fallback.jsonl"
    rows = fallback_rows(["+4915100000001", "+4915100000003"], SOURCE)
    assert write_recipients_file(str(path), rows) == 2

    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"recipient_phone": "+4915100000001", "recipient_name": "Ada", "variables": {"1": "A-1"}},
        {"recipient_phone": "+4915100000003"},  # not in the source: the phone alone
    ]
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert plan_recipients(str(path)).counts() == {"rows": 2, "recipients": 2, "invalid": 0, "duplicates": 0}
    assert list(tmp_path.glob("new/.report-*")) == []  # no partial file left


@pytest.mark.parametrize(
    "bad", ["relative/fallback.jsonl", "/tmp/fallback.csv", "s3://bucket/fallback.jsonl"]
)
def test_a_path_the_campaign_could_not_read_is_refused(bad: str) -> None:
    with pytest.raises(FamulorValidationError, match="output_path"):
        write_recipients_file(bad, [])


def test_the_default_path_keeps_every_id_inside_its_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", "/home/airflow")
    assert default_report_path("d", "manual__2026-01-01T00:00:00+00:00", "report") == (
        "/home/airflow/famulor/delivery-reports/d/manual__2026-01-01T00%3A00%3A00%2B00%3A00/report.jsonl"
    )
    assert default_report_path("..", "../x", "t", 3) == (
        "/home/airflow/famulor/delivery-reports/%2E./%2E.%2Fx/t__3.jsonl"
    )
