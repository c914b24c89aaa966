"""The entry-point plugin: Airflow loads it on every line; it mounts the receiver only on 3.1+."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS

PROBE = """
import json, sys
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
plugins, errors = plugins_manager._get_plugins() if hasattr(plugins_manager, "_get_plugins") else (
    plugins_manager.plugins, plugins_manager.import_errors)
ours = [p for p in plugins if p.name == "famulor_webhooks"]
print(json.dumps({
    "loaded": len(ours),
    "errors": {str(k): str(v) for k, v in errors.items()},
    "fastapi_loaded_by_plugin_load": "famulor_provider.webhooks.receiver" in sys.modules,
    "apps": [[a["url_prefix"], a["name"]] for a in ours[0].fastapi_apps] if ours else None,
}))
"""


def test_airflow_loads_the_plugin_from_its_entry_point(tmp_path: Path) -> None:
    # Not from the checkout: its setuptools egg-info would list the entry point a second time.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == 1
    assert result["errors"] == {}
    # Loading the plugin (every Airflow process does) does not build the app; the api-server asks for it.
    assert result["fastapi_loaded_by_plugin_load"] is False
    assert result["apps"] == ([["/famulor", "Famulor webhooks"]] if AIRFLOW_V_3_1_PLUS else [])
