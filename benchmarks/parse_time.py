"""What importing the provider's DAG-facing modules costs a DAG file parse.

Each sample is a fresh interpreter that first imports Airflow's authoring API (what every DAG
file pays anyway), then the modules under test; it reports the extra time and modules. The
baseline is the HTTP provider's operator + sensor, measured the same way in the same run when it
is installed (`uv pip install apache-airflow-providers-http`).

A second reference is the floor that any provider with the same classes pays: a module that only
imports the compat layer and defines five empty operators and one empty sensor. Ours minus the
floor is what the provider's own code costs.

Run: ``python benchmarks/parse_time.py [--samples 15]``
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# What a DAG file imports; the trigger module is imported by the triggerer, not at DAG parse.
OURS = ["famulor_provider.operators.whatsapp", "famulor_provider.sensors.whatsapp"]
HTTP = ["airflow.providers.http.operators.http", "airflow.providers.http.sensors.http"]
HEAVY = ["requests", "httpx", "tenacity", "aiohttp", "http.server", "famulor_provider.hooks.famulor"]

PROBE = """
import json, sys, time
try:
    import airflow.sdk
except ImportError:  # Airflow 2
    import airflow.models.baseoperator
before = set(sys.modules)
start = time.perf_counter()
for name in sys.argv[2:]:
    __import__(name)
elapsed = time.perf_counter() - start
added = set(sys.modules) - before
heavy = sorted(m for m in added if m in sys.argv[1].split(","))
print(json.dumps({"ms": elapsed * 1000, "modules": len(added), "heavy": heavy}))
"""


FLOOR_MODULE = """
from airflow.providers.common.compat.sdk import BaseOperator, BaseSensorOperator


def _execute(self, context):
    return None


OPERATORS = [
    type(f"Operator{i}", (BaseOperator,), {"template_fields": ("famulor_conn_id",), "execute": _execute})
    for i in range(5)
]


class Sensor(BaseSensorOperator):
    template_fields = ("famulor_conn_id",)

    def poke(self, context):
        return True
"""


def sample(modules: list[str], samples: int, path: str | None = None) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": path} if path else None
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", PROBE, ",".join(HEAVY), *modules],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(samples)
    ]
    return {
        "ms": statistics.median(r["ms"] for r in runs),
        "modules": runs[0]["modules"],
        "heavy": runs[0]["heavy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15)
    args = parser.parse_args()
    # Measure with compiled bytecode, as an installed package runs (this machine may not write .pyc).
    compileall.compile_dir(str(Path(__file__).resolve().parents[1] / "famulor_provider"), quiet=1)

    ours = sample(OURS, args.samples)
    print(
        f"famulor operator+sensor: {ours['ms']:.2f} ms, {ours['modules']} modules, "
        f"heavy imports: {ours['heavy'] or 'none'} (median of {args.samples} fresh interpreters)"
    )
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "floor_classes.py").write_text(FLOOR_MODULE)
        compileall.compile_dir(folder, quiet=1)
        floor = sample(["floor_classes"], args.samples, path=folder)
    print(
        f"floor (compat layer + 5 empty operators + 1 empty sensor): {floor['ms']:.2f} ms; "
        f"famulor's own code: {ours['ms'] - floor['ms']:.2f} ms"
    )
    if importlib.util.find_spec("airflow.providers.http") is None:
        print("HTTP provider not installed: no baseline (pip install apache-airflow-providers-http)")
        return
    http = sample(HTTP, args.samples)
    print(
        f"http operator+sensor (baseline):  {http['ms']:.2f} ms, {http['modules']} modules, "
        f"heavy imports: {http['heavy'] or 'none'}"
    )
    print(
        f"ratio famulor/http: time {ours['ms'] / http['ms']:.3f}, "
        f"modules {ours['modules'] / http['modules']:.3f}"
    )


if __name__ == "__main__":
    main()
