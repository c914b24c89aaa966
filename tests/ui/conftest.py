"""
Fixtures for the browser tests of the Famulor connection form (``FAMULOR_UI_TESTS=1``).

Each session starts, as subprocesses on 127.0.0.1: the Famulor sandbox
(``python -m famulor_provider.testing serve``) and the Airflow web server of the installed line
(Airflow 3: ``airflow api-server`` with the simple auth manager; Airflow 2.11: ``airflow webserver``
with a Flask AppBuilder admin), each with a temporary ``AIRFLOW_HOME`` and a freshly migrated SQLite
DB. Both are stopped by PID (their process group) at teardown, also when a test fails.

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright (``FAMULOR_UI_CHROMIUM``
overrides the path). Screenshots go to ``artifacts/ui/airflow-<version>/``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from airflow_web import (
    REPO_ROOT,
    UI_DIR,
    AirflowServer,
    SandboxProcess,
    airflow_executable,
    free_port,
    log_tail,
    run_airflow,
    server_env,
    start_process,
    stop_process,
    wait_until_ready,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

ENABLE_VAR = "FAMULOR_UI_TESTS"
CHROMIUM = os.environ.get("FAMULOR_UI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
]
ADMIN_USER = "admin"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this directory's tests unless ``FAMULOR_UI_TESTS=1`` (they start servers and a browser)."""
    if os.environ.get(ENABLE_VAR) == "1":
        return
    skip = pytest.mark.skip(
        reason=f"browser UI tests: set {ENABLE_VAR}=1 (or run `make test-ui`) to start Airflow's "
        "web server and Chromium"
    )
    for item in items:
        if UI_DIR in Path(str(item.path)).parents:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Keep each phase's report on the item, so the page fixture can screenshot a failed test.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def sandbox_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """``python -m famulor_provider.testing serve`` on a free port, with a key made for this run."""
    workdir = tmp_path_factory.mktemp("sandbox")
    port_file = workdir / "port"
    log_path = workdir / "sandbox.log"
    api_key = f"famulor-ui-{secrets.token_hex(12)}"
    args = [sys.executable, "-m", "famulor_provider.testing", "serve", "--port", "0"]
    args += ["--port-file", str(port_file), "--api-key", api_key]
    process = start_process(args, dict(os.environ), log_path)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Famulor sandbox did not start:\n{log_tail(log_path)}")
            time.sleep(0.05)
        port = int(port_file.read_text().strip())
        yield SandboxProcess(base_url=f"http://127.0.0.1:{port}/api", api_key=api_key)
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def airflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:
    """The installed Airflow's web server on a free 127.0.0.1 port, with authentication on."""
    version = importlib.metadata.version("apache-airflow")
    major = int(version.split(".", 1)[0])
    home = tmp_path_factory.mktemp("airflow-home")
    env = server_env(home)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = home / "webserver.log"
    if major >= 3:
        # The simple auth manager makes up a password for each listed user at start.
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{ADMIN_USER}:admin"
        env["AIRFLOW__API__BASE_URL"] = base_url
        run_airflow(["db", "migrate"], env)
        args = ["api-server", "-H", "127.0.0.1", "-p", str(port), "--workers", "1"]
        health = f"{base_url}/api/v2/monitor/health"
        password = ""
    else:
        env["AIRFLOW__WEBSERVER__SECRET_KEY"] = secrets.token_hex(16)
        env["AIRFLOW__WEBSERVER__WORKERS"] = "1"
        run_airflow(["db", "migrate"], env)
        password = secrets.token_urlsafe(12)
        user = ["--username", ADMIN_USER, "--password", password, "--role", "Admin"]
        person = ["--firstname", "Ada", "--lastname", "Admin", "--email", "admin@example.com"]
        run_airflow(["users", "create", *user, *person], env)
        args = ["webserver", "-H", "127.0.0.1", "-p", str(port), "--workers", "1"]
        health = f"{base_url}/health"
    process = start_process([airflow_executable(), *args], env, log_path)
    try:
        wait_until_ready(health, process, log_path)
        if major >= 3:
            generated = home / "simple_auth_manager_passwords.json.generated"
            password = json.loads(generated.read_text())[ADMIN_USER]
        yield AirflowServer(
            version=version,
            base_url=base_url,
            home=home,
            env=env,
            username=ADMIN_USER,
            password=password,
            log_path=log_path,
        )
    finally:
        stop_process(process)


# ---------------------------------------------------------------------------------------------
# Browser


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where this line's screenshots go (git-ignored), emptied at the start of the session."""
    path = REPO_ROOT / "artifacts" / "ui" / f"airflow-{importlib.metadata.version('apache-airflow')}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no `playwright install`)"
    )
    with sync_api.sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    """Debian's Chromium; Playwright's own browser downloads are not used."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set FAMULOR_UI_CHROMIUM)")
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def page(browser: Browser, artifacts_dir: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (no cookies) per test; a screenshot is kept if the test fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        yield page
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(artifacts_dir / f"FAILED-{request.node.name}.png"), full_page=True)
        context.close()
