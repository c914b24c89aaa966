"""DAG-parse cost: the DAG-facing modules must not pull in HTTP clients, retry libraries or the hook."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
try:
    import airflow.sdk
except ImportError:  # Airflow 2
    import airflow.models.baseoperator
before = set(sys.modules)
import famulor_provider.operators.whatsapp
import famulor_provider.sensors.whatsapp
import famulor_provider.triggers.whatsapp
import famulor_provider.webhooks.assets
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_dag_facing_modules_import_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True, timeout=120
    )
    added = json.loads(out.stdout.strip().splitlines()[-1])
    assert "famulor_provider.operators.whatsapp" in added  # the probe really imported them
    heavy = ("requests", "httpx", "tenacity", "urllib3", "http.server", "socketserver")
    ours_only = ("famulor_provider.hooks.famulor", "famulor_provider.testing")
    assert [m for m in added if m.split(".")[0] in heavy or m in heavy] == []
    assert [m for m in added if m.startswith(ours_only)] == []
    # Airflow's own modules (2.11 loads its sensor package for BaseSensorOperator) are not ours to count.
    ours = [m for m in added if not m.startswith("airflow.")]
    assert len(ours) < 15, ours
