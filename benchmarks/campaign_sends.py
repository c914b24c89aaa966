"""Benchmark: campaign sends through ``SendWhatsAppCampaignOperator`` against the local sandbox.

Three parts, each selected by a flag (several may be given; none runs all three):

``--deployment``
    A real Airflow 3 deployment (``tests/system/deployment.py``: api-server, scheduler with the
    LocalExecutor, dag-processor, on 127.0.0.1) against ``FamulorSandbox`` with the API's
    5 sends/s limit, in one run: ``--recipients`` (1,000) through one campaign task, then
    ``--per-recipient`` (200) through the per-recipient pattern (one mapped
    ``SendWhatsAppTemplateOperator`` task per recipient, parallelism 4). For each: sends/s where
    the sandbox saw them (first to last ``accepted_at``), 429 answers, duplicates, wall time;
    then the ratio.
``--cost``
    The provider's own cost per send, with the sandbox's limit off (the sandbox in a separate
    process, so its CPU is not counted): ``--cost-recipients`` (2,000) through the campaign
    task with ``max_sends_per_second=1000`` in this process (``dag.test()``), timing the
    operator's ``execute`` (ledger writes and fsyncs included): sends/s and CPU ms per
    recipient. The baseline is the old measurement: ``--baseline-recipients`` (100) through the
    per-recipient DAG in this process, CPU ms per recipient for the whole run.
``--memory``
    ``--memory-recipients`` (100,000) from a JSON Lines file through the campaign task in this
    process, sandbox limit off: peak RSS (sampled every 50 ms, and ``ru_maxrss``) against the
    RSS before ``execute``. The ledger goes to ``--ledger-folder`` (default ``/dev/shm`` when it
    exists: two fsyncs per recipient on a disk would make this part last far longer).

Every wait has a time limit (``--timeout-factor`` scales them). Not a timed test: the figures
depend on the machine. Airflow 3 only for ``--deployment``.

Usage: ``python benchmarks/campaign_sends.py [--deployment] [--cost] [--memory]``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parents[1]
PER_RECIPIENT_DAG = REPO_ROOT / "example_dags" / "famulor_whatsapp_per_recipient.py"
# The per-recipient pattern as it shipped before the campaign operator, when the file above is
# not there yet: example_dags/famulor_whatsapp_campaign.py at this commit.
PER_RECIPIENT_COMMIT = "20cfd75f00b52b20e743cbee994e01d96cea4790"
PER_RECIPIENT_OLD_PATH = "example_dags/famulor_whatsapp_campaign.py"
CAMPAIGN_DAG_ID = "famulor_bench_campaign"
SEND_PATH = "/api/user/whatsapp/send"
MB = 2**20
SERVE = [sys.executable, "-m", "famulor_provider.testing", "serve"]

# One campaign task; its settings come from the environment (read where the DAG is parsed).
CAMPAIGN_DAG_SOURCE = '''\
"""Benchmark DAG (benchmarks/campaign_sends.py): one campaign task over a JSON Lines file."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG

from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator

with DAG(
    dag_id="famulor_bench_campaign",
    start_date=datetime(2024, 1, 1),
    schedule=None,
    catchup=False,
    params={"recipients_file": ""},
):
    SendWhatsAppCampaignOperator(
        task_id="send_campaign",
        sender_id=12,
        template_name="order_update",
        language="en",
        recipients="{{ params.recipients_file }}",
        ledger_path=os.environ["FAMULOR_BENCH_LEDGER_DIR"],
        max_sends_per_second=float(os.environ.get("FAMULOR_BENCH_MAX_RATE") or 0) or None,
        check_messaging_limit=False,
        execution_timeout=timedelta(seconds=float(os.environ.get("FAMULOR_BENCH_TASK_TIMEOUT") or 900)),
    )
'''


# -- helpers ----------------------------------------------------------------------------------------


def phones(prefix: int, count: int) -> list[str]:
    """``count`` distinct E.164 phones; ``prefix`` keeps the parts of one run apart."""
    return [f"+1{prefix:03d}{i:07d}" for i in range(count)]


def write_jsonl(path: Path, numbers: list[str]) -> Path:
    with path.open("w") as file:
        for i, phone in enumerate(numbers):
            file.write(json.dumps({"recipient_phone": phone, "variables": {"1": f"A-{i}"}}) + "\n")
    return path


def per_recipient_dag(folder: Path) -> tuple[Path, str]:
    """The per-recipient DAG file copied into ``folder``, and its dag_id."""
    if PER_RECIPIENT_DAG.exists():
        source, origin = PER_RECIPIENT_DAG.read_text(), str(PER_RECIPIENT_DAG.relative_to(REPO_ROOT))
    else:
        source = subprocess.run(
            ["git", "show", f"{PER_RECIPIENT_COMMIT}:{PER_RECIPIENT_OLD_PATH}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        origin = f"{PER_RECIPIENT_OLD_PATH} at {PER_RECIPIENT_COMMIT[:7]}"
    match = re.search(r"dag_id\s*=\s*[\"']([^\"']+)[\"']", source)
    if match is None:
        raise SystemExit(f"cannot find the dag_id in {origin}")
    path = folder / "bench_per_recipient.py"
    path.write_text(source)
    print(f"per-recipient pattern: {origin} (dag_id {match.group(1)})")
    return path, match.group(1)


def sandbox_figures(entries: list[dict[str, Any]], wanted: set[str]) -> dict[str, Any]:
    """Sends/s (first to last ``accepted_at``), duplicates and missing among ``wanted``."""
    mine = [entry for entry in entries if entry["recipient_phone"] in wanted]
    counts = Counter(entry["recipient_phone"] for entry in mine)
    times = sorted(entry["accepted_at"] for entry in mine)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "billed": len(mine),
        "span": span,
        "rate": (len(times) - 1) / span if span else 0.0,
        "duplicates": sum(1 for n in counts.values() if n > 1),
        "missing": len(wanted - set(counts)),
    }


def fail_on_duplicates(*figures: dict[str, Any]) -> None:
    if any(f["duplicates"] for f in figures):
        sys.exit("FAIL: a recipient was billed more than once")


# -- --deployment -----------------------------------------------------------------------------------


def run_deployment(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO_ROOT / "tests" / "system"))
    from deployment import AIRFLOW_3, AIRFLOW_VERSION, AirflowDeployment

    from famulor_provider.testing import FamulorSandbox

    if not AIRFLOW_3:
        sys.exit(f"--deployment needs Airflow 3 (the LocalExecutor); this is Airflow {AIRFLOW_VERSION}")
    factor = args.timeout_factor
    work = Path(tempfile.mkdtemp(prefix="famulor-bench-deploy-"))
    home = work / "airflow"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "bench_campaign.py").write_text(CAMPAIGN_DAG_SOURCE)
    _, per_recipient_id = per_recipient_dag(home / "dags")
    campaign_phones = phones(415, args.recipients)
    mapped_phones = phones(416, args.per_recipient)
    try:
        with FamulorSandbox(send_rate_limit=5) as sandbox:
            airflow = AirflowDeployment(
                home,
                {
                    **sandbox.env(),
                    "FAMULOR_BENCH_LEDGER_DIR": str(home / "shared" / "ledgers"),
                    "FAMULOR_BENCH_TASK_TIMEOUT": str(args.recipients / 5 * 2 + 120),
                    "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, args.per_recipient)),
                    "AIRFLOW__CORE__PARALLELISM": "4",
                },
                executor="local",
                triggerer=False,  # neither pattern defers
            )
            try:
                started = time.monotonic()
                airflow.up()
                airflow.wait_for_dag(CAMPAIGN_DAG_ID, timeout=180 * factor)
                airflow.wait_for_dag(per_recipient_id, timeout=180 * factor)
                airflow.wait_until_ready(timeout=180 * factor)
                print(f"deployment ready in {time.monotonic() - started:.0f} s (Airflow {AIRFLOW_VERSION})")
                recipients_file = write_jsonl(airflow.shared / "campaign.jsonl", campaign_phones)
                campaign = trigger_and_wait(
                    airflow,
                    sandbox,
                    CAMPAIGN_DAG_ID,
                    {"recipients_file": str(recipients_file)},
                    timeout=(args.recipients / 5 * 1.5 + 180) * factor,
                )
                recipients = [
                    {"recipient_phone": p, "variables": {"1": f"A-{i}"}} for i, p in enumerate(mapped_phones)
                ]
                mapped = trigger_and_wait(
                    airflow,
                    sandbox,
                    per_recipient_id,
                    {"template_name": "order_update", "language": "en", "recipients": recipients},
                    timeout=(args.per_recipient * 2.5 + 180) * factor,
                )
                entries = sandbox.ledger
            finally:
                airflow.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = []
    for name, run, wanted in (
        (f"campaign task, {args.recipients} recipients", campaign, set(campaign_phones)),
        (f"per-recipient tasks, {args.per_recipient} recipients", mapped, set(mapped_phones)),
    ):
        figures = sandbox_figures(entries, wanted)
        results.append(figures)
        print(
            f"  {name}: run {run['state']} in {run['wall']:.1f} s; {figures['billed']} billed in "
            f"{figures['span']:.1f} s = {figures['rate']:.2f} sends/s ({figures['rate'] / 5:.1%} of 5/s); "
            f"429 answers {run['answered_429']}; duplicates {figures['duplicates']}; "
            f"not billed {figures['missing']}; tasks {run['tasks']}"
        )
    if results[1]["rate"]:
        print(f"  ratio campaign / per-recipient: {results[0]['rate'] / results[1]['rate']:.2f}x sends/s")
    fail_on_duplicates(*results)


def trigger_and_wait(
    airflow: Any, sandbox: Any, dag_id: str, conf: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Trigger one run, wait for its end; its state, wall time, 429 answers and task states."""
    requests_before = len(sandbox.requests)
    started = time.monotonic()
    airflow.cli("dags", "trigger", dag_id, "--conf", json.dumps(conf))
    [(state,)] = airflow.wait_until(
        f"the {dag_id} run to finish",
        lambda: airflow.query(
            "SELECT state FROM dag_run WHERE dag_id = ? AND state IN ('success', 'failed')", dag_id
        ),
        timeout=timeout,
    )
    wall = time.monotonic() - started
    answered_429 = sum(
        1 for r in sandbox.requests[requests_before:] if r.path == SEND_PATH and r.status == 429
    )
    rows = airflow.query("SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ?", dag_id)
    tasks = Counter(f"{task_id} {ti_state} (try {tries})" for task_id, ti_state, tries in rows)
    return {"state": state, "wall": wall, "answered_429": answered_429, "tasks": dict(sorted(tasks.items()))}


# -- in-process parts (--cost, --memory) ------------------------------------------------------------


@contextlib.contextmanager
def in_process_airflow(work: Path) -> Iterator[Any]:
    """A throwaway AIRFLOW_HOME for ``dag.test()`` in this process; yields ``airflow_harness``."""
    home = work / "airflow"
    home.mkdir(parents=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(work),
            "AIRFLOW__CORE__MAX_MAP_LENGTH": "5000",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
    )
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import airflow_harness

    cache = REPO_ROOT / ".airflow" / "test-db" / f"airflow-{importlib.metadata.version('apache-airflow')}.db"
    if cache.exists():
        shutil.copyfile(cache, home / "airflow.db")
    else:
        airflow_harness.migrate_db(cache=cache)
    airflow_harness.speed_up_in_process_runs()
    logging.getLogger().setLevel(logging.WARNING)
    yield airflow_harness


@contextlib.contextmanager
def sandbox_process(work: Path) -> Iterator[dict[str, str]]:
    """The sandbox in its own process with its limit off; yields the connection's env."""
    from famulor_provider.testing.sandbox import SANDBOX_API_KEY

    port_file = work / "sandbox.port"
    with (work / "sandbox.log").open("wb") as log:
        process = subprocess.Popen(
            [*SERVE, "--send-rate-limit", "0", "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the sandbox did not start: {(work / 'sandbox.log').read_text()}")
            time.sleep(0.1)
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        connection = {
            "conn_type": "famulor",
            "host": f"{base}/api",
            "password": SANDBOX_API_KEY,
            "extra": {"timeout": 5, "max_retries": 2},
        }
        yield {"AIRFLOW_CONN_FAMULOR_DEFAULT": json.dumps(connection), "_SANDBOX": base}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def sandbox_span(base: str) -> tuple[int, float]:
    """Messages the sandbox process billed, and seconds from its first to its last ``accepted_at``."""

    def page(since: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"{base}/_sandbox/ledger?since={since}&limit=1", timeout=30) as answer:
            return dict(json.load(answer))

    first = page(0)
    total = int(first["total"])
    if total < 2:
        return total, 0.0
    last = page(total - 1)
    return total, last["data"][0]["accepted_at"] - first["data"][0]["accepted_at"]


@contextlib.contextmanager
def timed_execute(
    measure: Callable[[], contextlib.AbstractContextManager[dict[str, float]]],
) -> Iterator[dict]:
    """Wrap ``SendWhatsAppCampaignOperator.execute`` in ``measure``; yields its figures when done."""
    from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator

    original = SendWhatsAppCampaignOperator.execute
    figures: dict[str, Any] = {}

    @functools.wraps(original)
    def execute(self: Any, context: Any) -> Any:
        try:
            with measure() as measured:
                figures["summary"] = original(self, context)
        finally:
            figures.update(measured)  # filled when ``measure`` exits
        return figures["summary"]

    with mock.patch.object(SendWhatsAppCampaignOperator, "execute", execute):
        yield figures


@contextlib.contextmanager
def cpu_and_wall() -> Iterator[dict[str, float]]:
    figures: dict[str, float] = {}
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield figures
    finally:
        figures["cpu"], figures["wall"] = time.process_time() - cpu, time.perf_counter() - wall


def run_cost(args: argparse.Namespace) -> None:
    factor = args.timeout_factor
    work = Path(tempfile.mkdtemp(prefix="famulor-bench-cost-"))
    try:
        dag_file = work / "bench_campaign.py"
        dag_file.write_text(CAMPAIGN_DAG_SOURCE)
        baseline_file, baseline_id = per_recipient_dag(work)
        numbers = phones(417, args.cost_recipients)
        recipients_file = write_jsonl(work / "cost.jsonl", numbers)
        os.environ.update(
            {
                "FAMULOR_BENCH_LEDGER_DIR": str(work / "ledgers"),
                "FAMULOR_BENCH_MAX_RATE": "1000",
                "FAMULOR_BENCH_TASK_TIMEOUT": str(600 * factor),
            }
        )
        with in_process_airflow(work) as harness, sandbox_process(work) as env:
            base = env.pop("_SANDBOX")
            with timed_execute(cpu_and_wall) as figures:
                result = harness.run_dag(
                    dag_file,
                    CAMPAIGN_DAG_ID,
                    conf={"recipients_file": str(recipients_file)},
                    env=env,
                    timeout=600 * factor,
                )
            billed, span = sandbox_span(base)
            # The baseline: the old measurement, one mapped send task per recipient, in process.
            baseline = [
                {"recipient_phone": p, "variables": {"1": "B"}} for p in phones(418, args.baseline_recipients)
            ]
            with cpu_and_wall() as old:
                old_result = harness.run_dag(
                    baseline_file,
                    baseline_id,
                    conf={"template_name": "order_update", "language": "en", "recipients": baseline},
                    env=env,
                    timeout=(args.baseline_recipients * 5 + 120) * factor,
                )
            old_billed = sandbox_span(base)[0] - billed
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.cost_recipients
    summary = figures.get("summary") or {}
    print(f"Cost per send (sandbox limit off, in its own process; Airflow {harness.airflow_version()}):")
    print(
        f"  campaign task, {n} recipients, max_sends_per_second=1000: run {result.state}; execute "
        f"{figures['wall']:.2f} s wall = {n / figures['wall']:.0f} sends/s; {figures['cpu']:.2f} s CPU = "
        f"{figures['cpu'] * 1000 / n:.2f} ms CPU per recipient (ledger: 2 fsynced lines each)"
    )
    print(
        f"  sandbox: {billed} billed in {span:.2f} s = {(billed - 1) / span if span else 0:.0f} sends/s; "
        f"summary sent {summary.get('sent')}, unknown {summary.get('unknown')}, "
        f"failed {summary.get('failed')}"
    )
    m = args.baseline_recipients
    sends = old_result.mapped("send_template") if hasattr(old_result, "mapped") else []
    states = Counter(str(ti.state) for ti in sends)
    print(
        f"  baseline, per-recipient DAG ({m} recipients, dag.test in this process): run {old_result.state}, "
        f"send tasks {dict(states)}, {old_billed} billed; {old['wall']:.1f} s wall, {old['cpu']:.1f} s CPU = "
        f"{old['cpu'] * 1000 / m:.0f} ms CPU per recipient (a deployment adds a task process per recipient)"
    )
    print(f"  ratio per-recipient / campaign CPU per recipient: {old['cpu'] / m / (figures['cpu'] / n):.0f}x")


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """RSS before, peak (sampled every 50 ms) and ``ru_maxrss``, in MB."""
    import psutil

    process = psutil.Process()
    figures: dict[str, float] = {}
    before = process.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall = time.perf_counter()
    try:
        yield figures
    finally:
        stop.set()
        sampler.join(timeout=5)
        figures.update(
            before=before / MB,
            peak=max(peak[0], process.memory_info().rss) / MB,
            maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            wall=time.perf_counter() - wall,
        )


def run_memory(args: argparse.Namespace) -> None:
    factor = args.timeout_factor
    work = Path(tempfile.mkdtemp(prefix="famulor-bench-memory-"))
    ledger_root = Path(tempfile.mkdtemp(prefix="famulor-bench-ledger-", dir=args.ledger_folder))
    try:
        dag_file = work / "bench_campaign.py"
        dag_file.write_text(CAMPAIGN_DAG_SOURCE)
        n = args.memory_recipients
        recipients_file = write_jsonl(work / "memory.jsonl", phones(419, n))
        os.environ.update(
            {
                "FAMULOR_BENCH_LEDGER_DIR": str(ledger_root),
                "FAMULOR_BENCH_MAX_RATE": "5000",
                "FAMULOR_BENCH_TASK_TIMEOUT": str(args.memory_timeout * factor),
            }
        )
        with in_process_airflow(work) as harness, sandbox_process(work) as env:
            base = env.pop("_SANDBOX")
            with timed_execute(peak_rss) as figures:
                result = harness.run_dag(
                    dag_file,
                    CAMPAIGN_DAG_ID,
                    conf={"recipients_file": str(recipients_file)},
                    env=env,
                    timeout=args.memory_timeout * factor + 120,
                )
            billed, span = sandbox_span(base)
            ledger_mb = sum(p.stat().st_size for p in ledger_root.rglob("*.jsonl")) / MB
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ledger_root, ignore_errors=True)

    summary = figures.get("summary") or {}
    print(
        f"Memory, {n} recipients from a JSON Lines file "
        f"(sandbox limit off; Airflow {harness.airflow_version()}):"
    )
    print(
        f"  run {result.state}; sent {summary.get('sent')}, unknown {summary.get('unknown')}, failed "
        f"{summary.get('failed')}; {billed} billed in {span:.0f} s; execute {figures['wall']:.0f} s wall"
    )
    grown = figures["peak"] - figures["before"]
    print(
        f"  RSS before execute {figures['before']:.0f} MB, peak during it {figures['peak']:.0f} MB "
        f"(+{grown:.0f} MB, {grown * MB / n:.0f} "
        f"bytes per recipient); ru_maxrss {figures['maxrss']:.0f} MB; ledger file {ledger_mb:.1f} MB "
        f"in {args.ledger_folder or tempfile.gettempdir()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployment", action="store_true", help="the real-deployment comparison at 5/s")
    parser.add_argument(
        "--cost", action="store_true", help="CPU per send with the limit off, and the baseline"
    )
    parser.add_argument("--memory", action="store_true", help="peak memory for a large JSON Lines file")
    parser.add_argument("--recipients", type=int, default=1000, help="--deployment: campaign recipients")
    parser.add_argument("--per-recipient", type=int, default=200, help="--deployment: per-recipient DAG")
    parser.add_argument("--cost-recipients", type=int, default=2000)
    parser.add_argument("--baseline-recipients", type=int, default=100)
    parser.add_argument("--memory-recipients", type=int, default=100_000)
    parser.add_argument("--memory-timeout", type=float, default=600, help="seconds for the --memory campaign")
    parser.add_argument(
        "--ledger-folder",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="--memory: where the ledger goes (default /dev/shm when it exists)",
    )
    parser.add_argument("--timeout-factor", type=float, default=1.0, help="scale every time limit")
    args = parser.parse_args()
    parts = [part for part in PARTS if getattr(args, part)] or list(PARTS)
    if len(parts) == 1:
        print(f"=== --{parts[0]} ===", flush=True)
        PARTS[parts[0]](args)
        return
    # One process per part: Airflow reads its home once per process.
    others = [arg for arg in sys.argv[1:] if arg.lstrip("-") not in PARTS]
    failed = [
        part
        for part in parts
        if subprocess.run([sys.executable, __file__, f"--{part}", *others], check=False).returncode
    ]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "deployment": run_deployment,
    "cost": run_cost,
    "memory": run_memory,
}


if __name__ == "__main__":
    main()
