"""The campaign's recipients source: lists, JSON text, CSV and JSON Lines files, the pre-send plan."""

from __future__ import annotations

import ast
import json
import time
import tracemalloc
from pathlib import Path

import pytest

import famulor_provider.campaign.ledger
import famulor_provider.campaign.recipients
from famulor_provider.campaign.recipients import check_recipient, iter_recipients, plan_recipients
from famulor_provider.exceptions import FamulorError, FamulorValidationError


def recipient(phone: str, name: str | None = None, variables: dict | None = None) -> dict:
    return {"recipient_phone": phone, "recipient_name": name, "variables": variables}


def test_a_list_of_mappings_is_checked_and_normalized():
    rows = list(
        iter_recipients(
            [
                {
                    "recipient_phone": "+1 (415) 555-0001",
                    "recipient_name": "Ann",
                    "variables": {"1": "A-1", "n": 2},
                },
                {"recipient_phone": "4155550002"},
                {"recipient_phone": "+14155550003", "varibles": {"1": "x"}},
                {"recipient_phone": "+14155550004", "recipient_name": "x" * 256},
                {"recipient_phone": "+14155550005", "variables": {"1": ["list"]}},
                "+14155550006",
                {"recipient_phone": "+14155550007", "variables": '{"1": "from JSON text"}'},
            ]
        )
    )
    assert rows[0] == (1, recipient("+14155550001", "Ann", {"1": "A-1", "n": 2}), None)
    assert rows[1][:2] == (2, None)
    assert "E.164" in rows[1][2]
    assert "got '415****02'" in rows[1][2]  # masked
    assert "unknown key(s) 'varibles'" in rows[2][2]
    assert "recipient_name" in rows[3][2]
    assert "255" in rows[3][2]
    assert "must be text or a number" in rows[4][2]
    assert rows[5] == (6, None, "expected an object with recipient_phone, got str")
    assert rows[6] == (7, recipient("+14155550007", None, {"1": "from JSON text"}), None)


def test_json_text_and_python_repr_of_a_list():
    items = [{"recipient_phone": "+14155550001", "variables": {"1": "A"}}]
    expected = [(1, recipient("+14155550001", None, {"1": "A"}), None)]
    assert list(iter_recipients(json.dumps(items))) == expected
    assert list(iter_recipients(repr(items))) == expected
    assert ast.literal_eval(repr(items)) == items


def test_python_text_with_every_kind_of_literal_reads_as_ast_would():
    items = [
        {
            "recipient_phone": "+14155550001",
            "recipient_name": 'O\'Brien "Bob"',
            "variables": {"1": "line\nbreak \\ tab\t", "2": "Zoë 😀 \x07", "n": None, "t": True, "f": False},
        },
        {"recipient_phone": "+14155550002", "variables": {"1": 1.5, "2": -2, "3": 1e3, "4": [1, (2,)]}},
    ]
    text = repr(items)
    from famulor_provider.campaign.recipients import _parse_list_text

    assert _parse_list_text(text) == json.loads(json.dumps(ast.literal_eval(text)))  # tuples as lists
    assert _parse_list_text("(  'a' ,  )") == ["a"]
    assert _parse_list_text("[1, 2,]") == [1, 2]
    assert _parse_list_text("[(1), (2, 3), ()]") == [1, [2, 3], []]  # (x) is x, as in Python


def test_python_text_of_a_list_costs_about_the_memory_of_its_json_text():
    """ast.literal_eval kept about 10 KB per row (1.1 GB for 100,000); here about the JSON's peak.
    benchmarks/campaign_memory.py measures 100,000 rows."""
    rows = [
        {
            "recipient_phone": f"+1415{n:07d}",
            "recipient_name": f"Customer {n}",
            "variables": {"1": f"order {n}"},
        }
        for n in range(5_000)
    ]
    peaks = {}
    for name, text in (("json", json.dumps(rows)), ("python", str(rows))):
        tracemalloc.start()
        try:
            plan = plan_recipients(text)
            _, peaks[name] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert plan.unique == 5_000
    assert peaks["python"] < 1.6 * peaks["json"], peaks


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "is empty"),
        ("None", "is empty"),
        ('{"recipient_phone": "+14155550001"}', "got one object"),
        ({"recipient_phone": "+14155550001"}, "got one mapping"),
        ("recipients.txt", "is not a .csv, .jsonl or .ndjson file"),
        ("[not json", "neither a list's JSON nor its Python literal"),
        ("[{'recipient_phone': set()}]", "render_template_as_native_obj=True"),
        ("[b'+14155550001']", "task.output"),
        ("(1)", "got int"),
        (42, "got int"),
    ],
)
def test_unreadable_sources_are_refused(source, message):
    with pytest.raises(FamulorValidationError, match="recipients") as err:
        plan_recipients(source)
    assert message in str(err.value)


CSV = """\ufeffrecipient_phone,recipient_name,1,2,first_name,
+1 415 555 0001,Ann,A-1,10,Annie,
+14155550002,,B-2,,,

+14155550003,Carl,C-3,30,,
12345,Dora,,,,
+14155550005,Eve,E-5,50,Evie,extra
+14155550006,Finn,F-6,60,Finnie,,surplus
"""


def test_csv_columns_become_variables_and_rows_are_numbered_from_the_first_data_row(tmp_path):
    path = tmp_path / "recipients.csv"
    path.write_text(CSV, encoding="utf-8")
    rows = list(iter_recipients(str(path)))
    assert rows[0] == (
        1,
        recipient("+14155550001", "Ann", {"1": "A-1", "2": "10", "first_name": "Annie"}),
        None,
    )
    assert rows[1] == (2, recipient("+14155550002", None, {"1": "B-2"}), None)  # empty cells left out
    assert rows[2] == (
        3,
        recipient("+14155550003", "Carl", {"1": "C-3", "2": "30"}),
        None,
    )  # blank row skipped
    assert rows[3][:2] == (4, None)
    assert "got '****'" in rows[3][2] and "12345" not in rows[3][2]  # masked: the row number finds it
    assert rows[4] == (5, None, "has a value in a column with no header")
    assert rows[5] == (6, None, "has 7 cells, the header has 6 columns")


def test_csv_without_a_phone_column_or_with_repeated_columns_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("phone,name\n+14155550001,Ann\n")
    with pytest.raises(FamulorValidationError, match="no recipient_phone column"):
        list(iter_recipients(str(path)))
    path.write_text("recipient_phone,1,1\n+14155550001,a,b\n")
    with pytest.raises(FamulorValidationError, match=r"repeats the column\(s\) \['1'\]"):
        list(iter_recipients(str(path)))
    path.write_text("\n\n")
    with pytest.raises(FamulorValidationError, match="is empty"):
        list(iter_recipients(str(path)))
    with pytest.raises(FamulorValidationError, match="does not exist"):
        list(iter_recipients(str(tmp_path / "missing.csv")))


def test_json_lines_rows_are_line_numbers(tmp_path):
    path = tmp_path / "recipients.ndjson"
    path.write_text(
        '{"recipient_phone": "+14155550001", "recipient_name": "Ann", "variables": {"name": "Ann"}}\n'
        "\n"
        '{"recipient_phone": "+14155550002"\n'
        '["+14155550003"]\r\n'
        '{"recipient_phone": "+14155550004"}'  # no final newline
    )
    rows = list(iter_recipients(path))  # a pathlib.Path works too
    assert rows[0] == (1, recipient("+14155550001", "Ann", {"name": "Ann"}), None)
    assert rows[1][:2] == (3, None)
    assert rows[1][2].startswith("not valid JSON")
    assert rows[2] == (4, None, "expected an object with recipient_phone, got list")
    assert rows[3] == (5, recipient("+14155550004"), None)


def test_a_file_uri_is_read_through_object_storage(tmp_path):
    path = tmp_path / "recipients.jsonl"
    path.write_text('{"recipient_phone": "+14155550001"}\n')
    plan = plan_recipients(path.as_uri())
    assert plan.source.startswith("file://")
    assert list(plan) == [recipient("+14155550001")]


def test_fail_mode_names_the_first_20_invalid_rows_and_counts_the_rest(tmp_path):
    path = tmp_path / "recipients.jsonl"
    with open(path, "w") as file:
        for n in range(1, 31):
            phone = f"+1415555{n:04d}" if n % 3 else f"bad-{n}"  # rows 3, 6, ... 30 are invalid
            file.write(json.dumps({"recipient_phone": phone}) + "\n")
        for n in range(31, 61):
            file.write(json.dumps({"recipient_phone": f"oops-{n}"}) + "\n")

    with pytest.raises(FamulorValidationError) as err:
        plan_recipients(str(path), "fail")
    message = str(err.value)
    assert err.value.field == "recipients"
    assert "40 of 60 rows" in message
    assert "nothing was sent" in message
    assert "row 3: Invalid recipient_phone" in message
    assert "row 3: Invalid recipient_phone: expected an E.164 phone number" in message
    assert "row 40:" in message  # the 20th invalid row
    assert "row 41:" not in message
    assert "and 20 more" in message
    assert "invalid_recipients='skip'" in message


def test_skip_mode_counts_invalid_rows_and_duplicates_and_sends_first_occurrences(tmp_path):
    path = tmp_path / "recipients.csv"
    path.write_text(
        "recipient_phone,recipient_name\n"
        "+14155550001,first\n"
        "bad,x\n"
        "+1 415 555 0001,second\n"
        "+14155550002,\n"
        "+1-415-555-0002,again\n"
    )
    plan = plan_recipients(str(path), "skip")
    assert plan.counts() == {"rows": 5, "recipients": 2, "invalid": 1, "duplicates": 2}
    assert plan.invalid_rows[0][0] == 2
    assert plan.describe_invalid().startswith("row 2: Invalid recipient_phone")
    expected = [recipient("+14155550001", "first"), recipient("+14155550002")]
    assert list(plan) == expected
    assert list(plan) == expected  # every iteration reads the file again

    with pytest.raises(FamulorValidationError, match="invalid_recipients"):
        plan_recipients(str(path), "ignore")


def test_a_list_is_iterated_again_and_a_generator_is_kept():
    items = [{"recipient_phone": "+14155550001"}, {"recipient_phone": "+14155550001"}]
    plan = plan_recipients(items)
    assert plan.counts() == {"rows": 2, "recipients": 1, "invalid": 0, "duplicates": 1}
    assert list(plan) == list(plan) == [recipient("+14155550001")]

    plan = plan_recipients(iter(items))
    assert list(plan) == list(plan) == [recipient("+14155550001")]


def test_a_file_that_changes_between_the_check_and_the_sends_is_reported(tmp_path):
    path = tmp_path / "recipients.jsonl"
    path.write_text('{"recipient_phone": "+14155550001"}\n')
    plan = plan_recipients(str(path))
    path.write_text('{"recipient_phone": "+14155550001"}\n{"recipient_phone": "+14155550002"}\n')
    sent = []
    with pytest.raises(FamulorError, match="changed during the campaign"):
        for item in plan:
            sent.append(item["recipient_phone"])
    assert sent == ["+14155550001", "+14155550002"]


def test_check_recipient_output_fits_the_hook():
    checked, error = check_recipient({"recipient_phone": "+14155550001", "recipient_name": ""})
    assert error is None
    assert checked == recipient("+14155550001")


def test_the_campaign_modules_import_no_airflow_or_http_at_module_level():
    allowed = {"famulor_provider.exceptions", "famulor_provider.validation"}
    for module in (famulor_provider.campaign.ledger, famulor_provider.campaign.recipients):
        tree = ast.parse(Path(module.__file__).read_text())
        for node in tree.body:
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("famulor_provider")
            ):
                assert node.module in allowed
            names = [alias.name for alias in getattr(node, "names", [])]
            module_name = getattr(node, "module", None) or ""
            for name in [module_name, *names]:
                assert not name.startswith(("airflow", "requests", "httpx", "fsspec")), (
                    module.__name__,
                    name,
                )


def test_100000_json_lines_are_planned_with_bounded_memory(tmp_path):
    path = tmp_path / "recipients.jsonl"
    with open(path, "w") as file:
        for n in range(100_000):
            file.write(f'{{"recipient_phone": "+1415{n:07d}", "variables": {{"1": "order {n}"}}}}\n')
    started = time.perf_counter()
    plan = plan_recipients(str(path))
    count = sum(1 for _ in plan)
    elapsed = time.perf_counter() - started
    assert plan.counts() == {"rows": 100_000, "recipients": 100_000, "invalid": 0, "duplicates": 0}
    assert count == 100_000
    assert elapsed < 30  # two passes; about 2 s on an idle laptop core

    # The memory of a pass over the file, measured on 10,000 rows (tracemalloc is slow): the set of
    # phones is the only thing that grows; benchmarks/campaign_memory.py measures 100,000.
    small = tmp_path / "small.jsonl"
    with open(path) as source, open(small, "w") as target:
        for _ in range(10_000):
            target.write(source.readline())
    plan_recipients(str(small))  # Airflow's object storage imports outside the measurement
    tracemalloc.start()
    try:
        plan = plan_recipients(str(small))
        planned, plan_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert sum(1 for _ in plan) == 10_000
        _, iter_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert planned < 100_000, planned  # the plan keeps no rows
    assert plan_peak / 10_000 < 300, plan_peak
    assert iter_peak / 10_000 < 300, iter_peak


def test_an_invalid_phone_is_masked_in_the_row_errors():
    plan = plan_recipients(
        [
            {"recipient_phone": "+49 151 2345 678x"},
            {"recipient_phone": None},
            {"recipient_phone": "+14155550001"},
        ],
        "skip",
    )
    text = plan.describe_invalid()
    assert "row 1:" in text and "got '+49 ****8x'" in text and "2345" not in text
    assert "row 2:" in text and "got None" in text
