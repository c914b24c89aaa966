"""Provider registration and the connection form, as Airflow itself loads them."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from famulor_provider import __version__
from famulor_provider.get_provider_info import CONN_FIELDS, UI_FIELD_BEHAVIOUR, get_provider_info
from famulor_provider.hooks.famulor import FamulorHook

AIRFLOW_3 = importlib.metadata.version("apache-airflow").startswith("3.")


@pytest.fixture(autouse=True)
def fresh_providers_manager() -> Iterator[None]:
    """Each test loads providers anew (the manager is a process-wide singleton)."""
    from airflow.providers_manager import ProvidersManager

    def reset() -> None:
        ProvidersManager()._cleanup()
        if AIRFLOW_3:
            from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

            HookMetaService.hook_meta_data.cache_clear()

    # Airflow 3.1's hook_meta puts mock FAB/wtforms modules into sys.modules; take them out again.
    modules_before = set(sys.modules)
    reset()
    yield
    for name in set(sys.modules) - modules_before:
        if name.startswith(("wtforms", "flask_babel", "flask_appbuilder")):
            del sys.modules[name]
    reset()


def test_package_name_matches_distribution() -> None:
    info = get_provider_info()
    dist = importlib.metadata.distribution(info["package-name"])
    assert dist.metadata["Name"] == "airflow-provider-famulor"
    assert info["versions"] == [__version__] == [dist.version]
    entry_points = [ep for ep in dist.entry_points if ep.group == "apache_airflow_provider"]
    assert [ep.load() for ep in entry_points] == [get_provider_info]


def test_every_listed_module_imports() -> None:
    info = get_provider_info()
    modules = [
        m
        for kind in ("hooks", "operators", "sensors", "triggers")
        for e in info[kind]
        for m in e["python-modules"]
    ]
    for module in modules:
        __import__(module)
    hook_path = info["connection-types"][0]["hook-class-name"]
    assert hook_path == f"{FamulorHook.__module__}.{FamulorHook.__name__}"


def test_providers_manager_registers_the_connection_type() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.providers["airflow-provider-famulor"].version == __version__
    hook = manager.hooks["famulor"]
    assert hook is not None
    assert (hook.hook_name, hook.connection_id_attribute_name) == ("Famulor", "famulor_conn_id")
    assert hook.hook_class_name == "famulor_provider.hooks.famulor.FamulorHook"
    assert hook.connection_testable is True


def test_legacy_field_behaviour_agrees_with_declarative() -> None:
    legacy = FamulorHook.get_ui_field_behaviour()
    assert legacy == {
        "hidden_fields": UI_FIELD_BEHAVIOUR["hidden-fields"],
        "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
        "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
    }
    assert set(legacy["hidden_fields"]) == {"login", "schema", "port", "extra"}
    assert legacy["relabeling"] == {"host": "Base URL", "password": "API Key"}


def _form_fields_as_airflow_sees_them() -> dict[str, dict[str, Any]]:
    """label/default/description of each extra field, from the form Airflow really builds."""
    if AIRFLOW_3:
        # What GET /ui/connections/hook_meta serves: conn-fields on 3.2+, the legacy widgets
        # (with FAB mocked) on 3.1.
        from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

        meta = next(m for m in HookMetaService.hook_meta_data() if m.connection_type == "famulor")
        return {
            name: {"label": f["schema"]["title"], "default": f["value"], "description": f["description"]}
            for name, f in (meta.extra_fields or {}).items()
        }
    from airflow.providers_manager import ProvidersManager  # 2.11: real wtforms fields

    widgets = ProvidersManager().connection_form_widgets
    return {
        w.field_name: {
            "label": str(w.field.args[0]),
            "default": w.field.kwargs["default"],
            "description": w.field.kwargs["description"],
        }
        for key, w in widgets.items()
        if key.startswith("extra__famulor__")
    }


def test_form_fields_agree_with_conn_fields() -> None:
    fields = _form_fields_as_airflow_sees_them()
    assert set(fields) == set(CONN_FIELDS) == {"timeout", "max_retries", "verify_ssl"}
    for name, spec in CONN_FIELDS.items():
        assert fields[name]["label"] == spec["label"]
        assert fields[name]["description"] == spec["description"]
        # the legacy timeout field is text (wtforms has no float field): compare as numbers
        assert type(spec["schema"]["default"])(fields[name]["default"]) == spec["schema"]["default"]


def test_standard_fields_as_airflow_serves_them() -> None:
    if not AIRFLOW_3:  # 2.11 renders the form from the hook's field behaviour
        from airflow.providers_manager import ProvidersManager

        assert ProvidersManager().field_behaviours["famulor"] == FamulorHook.get_ui_field_behaviour()
        return
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    meta = next(m for m in HookMetaService.hook_meta_data() if m.connection_type == "famulor")
    std = meta.standard_fields
    assert std is not None
    assert (std.host.title, std.host.placeholder, std.host.hidden) == (
        "Base URL",
        "https://app.famulor.de/api",
        False,
    )
    assert (std.password.title, std.password.hidden) == ("API Key", False)
    assert std.login.hidden and std.port.hidden and std.url_schema.hidden


def test_cli_lists_the_provider_and_hook() -> None:
    """`airflow providers list` / `hooks` work (a wrong package-name breaks every CLI command)."""
    script = textwrap.dedent(
        """
        import sys
        from airflow.__main__ import main
        sys.argv = ["airflow", "providers", sys.argv[1], "-o", "plain"]
        main()
        """
    )
    listed = subprocess.run(
        [sys.executable, "-c", script, "list"], capture_output=True, text=True, timeout=120, check=True
    )
    assert "airflow-provider-famulor" in listed.stdout
    hooks = subprocess.run(
        [sys.executable, "-c", script, "hooks"], capture_output=True, text=True, timeout=120, check=True
    )
    line = next(x for x in hooks.stdout.splitlines() if x.split() and x.split()[0] == "famulor")
    assert "famulor_provider.hooks.famulor.FamulorHook" in line


def test_provider_info_validates_against_airflows_schema() -> None:
    import json
    from pathlib import Path

    import airflow
    import jsonschema

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_the_famulor_config_section_is_registered_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers_manager import ProvidersManager

    monkeypatch.delenv("AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS", raising=False)
    configs = dict(ProvidersManager().provider_configs)
    option = configs["airflow-provider-famulor"]["famulor"]["options"]["log_full_phone_numbers"]
    assert (option["type"], option["default"]) == ("boolean", "False")
    script = "from airflow.configuration import conf; print(conf.get('famulor', 'log_full_phone_numbers'))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split()[-1] == "False"  # the provider's default, with nothing configured
