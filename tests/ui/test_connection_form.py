"""
The Famulor connection in Airflow's web UI, driven in a real browser (``FAMULOR_UI_TESTS=1``).

What a person does: Admin -> Connections -> Add, choose "Famulor", fill the form, save, test. The
tests assert what the form shows, what it stores (read back through the REST API and the CLI),
that ``FamulorHook`` works on exactly that stored connection, and what testing it answers.

Airflow 3 (React UI) and Airflow 2.11 (Flask AppBuilder UI) differ in every selector, so each line
has a small driver below; the tests themselves are shared.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from airflow_web import REPO_ROOT, AirflowServer, SandboxProcess, free_port

from famulor_provider.get_provider_info import CONN_FIELDS, DEFAULT_BASE_URL, UI_FIELD_BEHAVIOUR

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

DEFAULT_CONN_ID = "famulor_ui"
CUSTOM_CONN_ID = "famulor_ui_custom"
CUSTOM_EXTRAS = {"timeout": "12.5", "max_retries": "2", "verify_ssl": False}
WRONG_KEY = "famulor-ui-wrong-key-0123456789"
LABELS = {name: spec["label"] for name, spec in CONN_FIELDS.items()}
HELP_TEXTS = {name: spec["description"] for name, spec in CONN_FIELDS.items()}
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "connection-form.png"


def _label(text: str) -> str:
    return " ".join(text.replace("*", " ").split())


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def assert_key_masked(page: Page, *keys: str) -> None:
    """The API key input masks what was typed, and no key shows as text anywhere on the page."""
    for field in page.locator("input[name='password']").all():
        assert field.get_attribute("type") == "password"
    body = page.locator("body").inner_text()
    for key in keys:
        assert key not in body


@dataclass(frozen=True)
class FormFill:
    conn_id: str
    base_url: str
    api_key: str
    description: str = ""
    extras: dict[str, Any] | None = None


class AirflowUI:
    """How a person works the connection pages of one Airflow line."""

    def __init__(self, server: AirflowServer) -> None:
        self.server = server

    # Implemented per line.
    def login(self, page: Page) -> None:
        raise NotImplementedError

    def open_add_form(self, page: Page) -> None:
        raise NotImplementedError

    def connection_types(self, page: Page) -> list[str]:
        raise NotImplementedError

    def choose_famulor(self, page: Page) -> None:
        raise NotImplementedError

    def form(self, page: Page) -> Locator:
        raise NotImplementedError

    def show_standard_fields(self, page: Page) -> None:
        """Make the standard fields visible (Airflow 3 shows one accordion section at a time)."""

    def show_extra_fields(self, page: Page) -> None:
        """Make the provider's extra fields visible."""

    def save(self, page: Page) -> None:
        raise NotImplementedError

    def stored_connection(self, page: Page, conn_id: str) -> dict[str, Any]:
        raise NotImplementedError

    # Shared.
    def visible_labels(self, page: Page) -> list[str]:
        labels = [_label(text) for text in self.form(page).locator("label:visible").all_inner_texts()]
        return [label for label in labels if label and label not in ("Connection ID", "Connection Id")]

    def extra_input(self, page: Page, name: str) -> Locator:
        return self.form(page).get_by_label(LABELS[name], exact=True)

    def visible_help_texts(self, page: Page) -> list[str]:
        raise NotImplementedError

    def fill(self, page: Page, values: FormFill) -> None:
        form = self.form(page)
        self.show_standard_fields(page)
        form.get_by_label("Connection ID", exact=False).first.fill(values.conn_id)
        if values.description:
            form.get_by_label("Description", exact=True).fill(values.description)
        form.get_by_label("Base URL", exact=True).fill(values.base_url)
        form.get_by_label("API Key", exact=True).fill(values.api_key)
        if values.extras:
            self.show_extra_fields(page)
            for name, value in values.extras.items():
                field = self.extra_input(page, name)
                if isinstance(value, bool):
                    self.set_checkbox(page, name, value)
                else:
                    field.fill(str(value))

    def set_checkbox(self, page: Page, name: str, checked: bool) -> None:
        self.extra_input(page, name).set_checked(checked)

    def add_connection(self, page: Page, values: FormFill) -> None:
        self.open_add_form(page)
        self.choose_famulor(page)
        self.fill(page, values)
        self.save(page)


class ReactUI(AirflowUI):
    """Airflow 3: the React UI, simple auth manager, connections in a dialog."""

    def login(self, page: Page) -> None:
        page.goto(f"{self.server.base_url}/")
        page.get_by_label("Username").fill(self.server.username)
        page.get_by_label("Password").fill(self.server.password)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name="Admin").wait_for()

    def open_connections(self, page: Page) -> None:
        page.get_by_role("button", name="Admin").click()
        page.get_by_role("menuitem", name="Connections").click()
        page.wait_for_url("**/connections")

    def open_add_form(self, page: Page) -> None:
        self.open_connections(page)
        page.get_by_role("button", name="Add Connection").click()
        self.form(page).wait_for()

    def form(self, page: Page) -> Locator:
        return page.get_by_role("dialog")

    def connection_types(self, page: Page) -> list[str]:
        self.form(page).get_by_role("combobox", name="Connection Type").click()
        options = page.get_by_role("option")
        options.first.wait_for()
        return options.all_inner_texts()  # the menu stays open (Escape would close the dialog)

    def choose_famulor(self, page: Page) -> None:
        option = page.get_by_role("option", name="Famulor", exact=True)
        if not option.is_visible():
            self.form(page).get_by_role("combobox", name="Connection Type").click()
        option.click()
        self.form(page).get_by_label("Base URL", exact=True).wait_for()

    def accordion_sections(self, page: Page) -> list[str]:
        triggers = self.form(page).locator("[data-scope='accordion'][data-part='item-trigger']")
        return [_label(text) for text in triggers.all_inner_texts()]

    def _open_section(self, page: Page, name: str) -> None:
        trigger = self.form(page).get_by_role("button", name=name, exact=True)
        if trigger.get_attribute("aria-expanded") != "true":
            trigger.click()

    def show_standard_fields(self, page: Page) -> None:
        self._open_section(page, "Standard Fields")
        self.form(page).get_by_label("Base URL", exact=True).wait_for()

    def show_extra_fields(self, page: Page) -> None:
        self._open_section(page, "Extra Fields")
        self.extra_input(page, "timeout").wait_for()

    def extra_input(self, page: Page, name: str) -> Locator:
        # By name: Airflow 3.1 does not tie a text field's label to its input (3.2+ does).
        return self.form(page).locator(f"input[name='element_{name}']")

    def visible_help_texts(self, page: Page) -> list[str]:
        return self.form(page).locator("[data-part='helper-text']:visible").all_inner_texts()

    def set_checkbox(self, page: Page, name: str, checked: bool) -> None:
        # A Chakra switch: the real checkbox is visually hidden; people click its label.
        field = self.extra_input(page, name)
        if field.is_checked() != checked:
            self.form(page).get_by_text(LABELS[name], exact=True).click()
        assert field.is_checked() == checked

    def save(self, page: Page) -> None:
        def is_create(response: Any) -> bool:
            return response.request.method == "POST" and response.url.endswith("/api/v2/connections")

        with page.expect_response(is_create) as created:
            self.form(page).get_by_role("button", name="Save").click()
        assert created.value.status == 201, created.value.text()
        self.form(page).wait_for(state="hidden")

    def stored_connection(self, page: Page, conn_id: str) -> dict[str, Any]:
        response = requests.get(
            f"{self.server.base_url}/api/v2/connections/{conn_id}",
            headers={"Authorization": f"Bearer {self.server.token()}"},
            timeout=30,
        )
        response.raise_for_status()
        return dict(response.json())


class FabUI(AirflowUI):
    """Airflow 2.11: the Flask AppBuilder UI with a database user."""

    def login(self, page: Page) -> None:
        page.goto(f"{self.server.base_url}/login/")
        page.get_by_label("Username").fill(self.server.username)
        page.get_by_label("Password").fill(self.server.password)
        page.get_by_role("button", name="Sign In").click()
        page.get_by_role("link", name="Admin").wait_for()

    def open_add_form(self, page: Page) -> None:
        page.get_by_role("link", name="Admin").click()
        page.get_by_role("link", name="Connections").click()
        page.wait_for_url("**/connection/list/**")
        page.locator("a[href$='/connection/add']").first.click()
        self.form(page).wait_for()
        # The form's scripts (type switch, Test button) bind at page load; a person is slower.
        page.wait_for_load_state("networkidle")

    def form(self, page: Page) -> Locator:
        return page.locator("form", has=page.locator("#conn_type"))

    def connection_types(self, page: Page) -> list[str]:
        return [
            text.strip() for text in page.locator("select#conn_type option").all_inner_texts() if text.strip()
        ]

    def choose_famulor(self, page: Page) -> None:
        page.locator("select#conn_type").select_option(label="Famulor")
        self.form(page).get_by_label("Base URL", exact=True).wait_for()

    def visible_help_texts(self, page: Page) -> list[str]:
        return [t.strip() for t in self.form(page).locator(".help-block:visible").all_inner_texts()]

    def save(self, page: Page) -> None:
        page.get_by_role("button", name="Save").click()
        page.wait_for_url("**/connection/list/**")
        assert page.get_by_text("Added Row").is_visible()

    def stored_connection(self, page: Page, conn_id: str) -> dict[str, Any]:
        # Airflow 2.11's REST API authenticates with the logged-in session by default.
        response = page.request.get(f"{self.server.base_url}/api/v1/connections/{conn_id}")
        assert response.ok, response.text()
        return dict(response.json())

    def test_in_form(self, page: Page) -> dict[str, Any]:
        """Click the form's Test button; return the API's answer once the page shows it."""
        with page.expect_response(lambda r: r.url.endswith("/api/v1/connections/test")) as answer:
            page.get_by_role("button", name="Test").click()
        result = dict(answer.value.json())
        page.locator(".alert", has_text=result["message"]).first.wait_for()
        return result


@pytest.fixture(scope="module")
def ui(airflow_server: AirflowServer) -> AirflowUI:
    return ReactUI(airflow_server) if airflow_server.major >= 3 else FabUI(airflow_server)


def is_declarative_form(server: AirflowServer) -> bool:
    """Airflow 3.2+ draws the form from ``conn-fields``; older lines from the hook's WTForms widgets."""
    return _version_tuple(server.version) >= (3, 2)


# ---------------------------------------------------------------------------------------------
# The form


def test_add_form_offers_famulor_with_only_its_fields(
    page: Page, ui: AirflowUI, sandbox_process: SandboxProcess, artifacts_dir: Path
) -> None:
    ui.login(page)
    ui.open_add_form(page)
    assert "Famulor" in ui.connection_types(page)

    ui.choose_famulor(page)
    ui.show_standard_fields(page)
    form = ui.form(page)
    host = form.get_by_label("Base URL", exact=True)
    api_key = form.get_by_label("API Key", exact=True)
    assert host.get_attribute("placeholder") == DEFAULT_BASE_URL
    assert api_key.get_attribute("type") == "password"
    assert api_key.get_attribute("placeholder") == UI_FIELD_BEHAVIOUR["placeholders"]["password"]

    if isinstance(ui, ReactUI):
        # Airflow 3 shows one accordion section at a time; its "Extra Fields JSON" section is
        # always there (the React UI does not hide 'extra'), the per-field inputs are not.
        assert ui.accordion_sections(page) == ["Standard Fields", "Extra Fields", "Extra Fields JSON"]
        assert ui.visible_labels(page) == ["Connection Type", "Description", "Base URL", "API Key"]
    else:
        expected = ["Connection Type", "Description", "Base URL", "API Key", *LABELS.values()]
        assert ui.visible_labels(page) == expected
    for hidden in ("Login", "Schema", "Port", "Host", "Password", "Extra"):
        assert form.get_by_label(hidden, exact=True).filter(visible=True).count() == 0

    # What the README shows: a filled form, the key masked.
    values = FormFill(
        conn_id="famulor_default",
        description="Famulor account of the WhatsApp DAGs",
        base_url="",
        api_key=sandbox_process.api_key,
    )
    ui.fill(page, values)
    assert_key_masked(page, sandbox_process.api_key)
    standard_png = artifacts_dir / "add-form-standard-fields.png"
    form.screenshot(path=str(standard_png))

    ui.show_extra_fields(page)
    assert ui.extra_input(page, "timeout").input_value() == "30"
    assert ui.extra_input(page, "max_retries").input_value() == "5"
    assert ui.extra_input(page, "verify_ssl").is_checked()
    help_texts = ui.visible_help_texts(page)
    for name, text in HELP_TEXTS.items():
        assert text in help_texts, f"help text of {name!r} missing: {help_texts}"
    assert_key_masked(page, sandbox_process.api_key)
    extras_png = artifacts_dir / "add-form-extra-fields.png"
    form.screenshot(path=str(extras_png))

    if isinstance(ui, ReactUI):
        compose_docs_screenshot(page.context.browser, [standard_png, extras_png], artifacts_dir)


def compose_docs_screenshot(browser: Browser | None, parts: list[Path], artifacts_dir: Path) -> None:
    """Put the dialog's two sections side by side in one image for the README."""
    assert browser is not None
    images = "".join(
        f'<img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in parts
    )
    html = (
        "<html><body style='margin:0;background:#e2e8f0'>"
        "<div style='display:flex;gap:16px;padding:16px;align-items:flex-start;width:max-content'>"
        f"{images}</div></body></html>"
    )
    page = browser.new_page(device_scale_factor=1)
    try:
        page.set_content(html)
        target = artifacts_dir / "connection-form.png"
        page.locator("div").first.screenshot(path=str(target))
    finally:
        page.close()
    if os.environ.get("FAMULOR_UI_UPDATE_DOCS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(target, DOCS_SCREENSHOT)


# ---------------------------------------------------------------------------------------------
# Saving, and the hook on what was saved


@dataclass(frozen=True)
class SavedConnections:
    stored: dict[str, dict[str, Any]]  # conn_id -> the REST API's view
    exported: dict[str, dict[str, Any]]  # conn_id -> `airflow connections export` entry (with the key)


@pytest.fixture(scope="module")
def saved_connections(
    browser: Browser, ui: AirflowUI, airflow_server: AirflowServer, sandbox_process: SandboxProcess
) -> Iterator[SavedConnections]:
    """Two connections added through the form: one with the defaults, one with every extra changed."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        ui.login(page)
        ui.add_connection(
            page,
            FormFill(
                conn_id=DEFAULT_CONN_ID,
                description="Famulor sandbox",
                base_url=sandbox_process.base_url,
                api_key=sandbox_process.api_key,
            ),
        )
        ui.add_connection(
            page,
            FormFill(
                conn_id=CUSTOM_CONN_ID,
                base_url=sandbox_process.base_url,
                api_key=sandbox_process.api_key,
                extras=CUSTOM_EXTRAS,
            ),
        )
        stored = {
            conn_id: ui.stored_connection(page, conn_id) for conn_id in (DEFAULT_CONN_ID, CUSTOM_CONN_ID)
        }
    finally:
        context.close()
    export_file = airflow_server.home / "exported-connections.json"
    airflow_server.cli("connections", "export", "--file-format", "json", str(export_file))
    yield SavedConnections(stored=stored, exported=json.loads(export_file.read_text()))


def test_form_stores_plain_extras(
    saved_connections: SavedConnections, airflow_server: AirflowServer, sandbox_process: SandboxProcess
) -> None:
    defaults = saved_connections.stored[DEFAULT_CONN_ID]
    custom = saved_connections.stored[CUSTOM_CONN_ID]
    for conn in (defaults, custom):
        assert conn["conn_type"] == "famulor"
        assert conn["host"] == sandbox_process.base_url
        assert not conn.get("login") and not conn.get("schema") and conn.get("port") is None
        assert conn.get("password") in (None, "***")  # the REST API never hands the key out
    assert defaults["description"] == "Famulor sandbox"

    if is_declarative_form(airflow_server):
        # JSON-schema fields (Airflow 3.2+): typed values.
        assert json.loads(defaults["extra"]) == {"timeout": 30, "max_retries": 5, "verify_ssl": True}
        assert json.loads(custom["extra"]) == {"timeout": 12.5, "max_retries": 2, "verify_ssl": False}
    else:
        # WTForms widgets: StringField keeps text, IntegerField and BooleanField convert.
        assert json.loads(defaults["extra"]) == {"timeout": "30", "max_retries": 5, "verify_ssl": True}
        assert json.loads(custom["extra"]) == {"timeout": "12.5", "max_retries": 2, "verify_ssl": False}


@pytest.mark.parametrize(
    ("conn_id", "read_timeout", "max_retries", "verify_ssl"),
    [(DEFAULT_CONN_ID, 30.0, 5, True), (CUSTOM_CONN_ID, 12.5, 2, False)],
)
def test_hook_reads_what_the_form_saved(
    saved_connections: SavedConnections,
    sandbox_process: SandboxProcess,
    monkeypatch: pytest.MonkeyPatch,
    conn_id: str,
    read_timeout: float,
    max_retries: int,
    verify_ssl: bool,
) -> None:
    from famulor_provider.hooks.famulor import FamulorHook

    # The connection exactly as the UI stored it, handed to the hook the way a worker gets it.
    exported = saved_connections.exported[conn_id]
    assert exported["password"] == sandbox_process.api_key
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(exported))

    hook = FamulorHook(conn_id)
    assert hook.config.base_url == sandbox_process.base_url
    assert hook.config.deadline == read_timeout
    assert hook.config.max_retries == max_retries
    assert hook.config.verify_ssl is verify_ssl
    senders = hook.list_whatsapp_senders()
    assert senders, "the sandbox seeds online senders"
    assert all(sender.status == "online" for sender in senders)


# ---------------------------------------------------------------------------------------------
# Testing the connection


def _check_failure(message: str, sandbox: SandboxProcess, *expected: str) -> None:
    for text in expected:
        assert text in message, message
    assert sandbox.api_key not in message
    assert WRONG_KEY not in message


def test_test_connection_in_the_form_airflow2(
    page: Page, ui: AirflowUI, sandbox_process: SandboxProcess, artifacts_dir: Path
) -> None:
    """Airflow 2.11: the add form's Test button posts the form to ``/api/v1/connections/test``."""
    if not isinstance(ui, FabUI):
        pytest.skip("Airflow 3 has no Test button in the form; see the REST and row-button tests")
    ui.login(page)
    ui.open_add_form(page)
    ui.choose_famulor(page)
    values = FormFill(
        conn_id="famulor_test", base_url=sandbox_process.base_url, api_key=sandbox_process.api_key
    )
    ui.fill(page, values)

    ok = ui.test_in_form(page)
    assert_key_masked(page, sandbox_process.api_key)
    page.screenshot(path=str(artifacts_dir / "test-button-success.png"))
    assert ok["status"] is True, ok["message"]
    assert ok["message"].startswith(f"Connected to Famulor at {sandbox_process.base_url}")

    ui.form(page).get_by_label("API Key", exact=True).fill(WRONG_KEY)
    wrong_key = ui.test_in_form(page)
    assert_key_masked(page, sandbox_process.api_key, WRONG_KEY)
    page.screenshot(path=str(artifacts_dir / "test-button-wrong-key.png"))
    assert wrong_key["status"] is False
    _check_failure(wrong_key["message"], sandbox_process, "HTTP 401", "API key")

    ui.form(page).get_by_label("API Key", exact=True).fill(sandbox_process.api_key)
    ui.form(page).get_by_label("Base URL", exact=True).fill(f"http://127.0.0.1:{free_port()}/api")
    unreachable = ui.test_in_form(page)
    assert_key_masked(page, sandbox_process.api_key)
    page.screenshot(path=str(artifacts_dir / "test-button-unreachable.png"))
    assert unreachable["status"] is False
    _check_failure(unreachable["message"], sandbox_process, "could not connect")


def test_test_connection_through_rest_api_airflow3(
    saved_connections: SavedConnections, airflow_server: AirflowServer, sandbox_process: SandboxProcess
) -> None:
    """Airflow 3: ``POST /api/v2/connections/test`` with a user's bearer token."""
    if airflow_server.major < 3:
        pytest.skip(
            "Airflow 2.11 tests from the form's Test button (test_test_connection_in_the_form_airflow2)"
        )
    headers = {"Authorization": f"Bearer {airflow_server.token()}"}

    def test(**body: Any) -> dict[str, Any]:
        response = requests.post(
            f"{airflow_server.base_url}/api/v2/connections/test",
            json={"connection_id": DEFAULT_CONN_ID, "conn_type": "famulor", **body},
            headers=headers,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    stored = test()  # the saved connection, its stored key
    assert stored["status"] is True, stored["message"]
    assert stored["message"].startswith(f"Connected to Famulor at {sandbox_process.base_url}")

    wrong_key = test(host=sandbox_process.base_url, password=WRONG_KEY)
    assert wrong_key["status"] is False
    _check_failure(wrong_key["message"], sandbox_process, "HTTP 401", "API key")

    unreachable = test(host=f"http://127.0.0.1:{free_port()}/api", password=sandbox_process.api_key)
    assert unreachable["status"] is False
    _check_failure(unreachable["message"], sandbox_process, "could not connect")


def test_row_test_button_airflow3(
    page: Page,
    ui: AirflowUI,
    airflow_server: AirflowServer,
    saved_connections: SavedConnections,
    sandbox_process: SandboxProcess,
    artifacts_dir: Path,
) -> None:
    """Airflow 3's connection list has a Test button per row."""
    if not isinstance(ui, ReactUI):
        pytest.skip("Airflow 2.11's connection list has no Test button")
    ui.login(page)
    ui.open_connections(page)
    row = page.get_by_role("row").filter(has_text=DEFAULT_CONN_ID).filter(has_not_text=CUSTOM_CONN_ID)
    with page.expect_response(lambda r: r.url.endswith("/api/v2/connections/test")) as answer:
        row.get_by_role("button", name="Test Connection").click()
    response = answer.value
    sent = json.loads(response.request.post_data or "{}")
    page.get_by_text(re.compile(r"^Test Connection (Failed|Successful)$")).wait_for()  # the toast
    assert_key_masked(page, sandbox_process.api_key)
    page.screenshot(path=str(artifacts_dir / "row-test-button.png"))

    if (
        response.status == 400
        and sent.get("port") == 0
        and _version_tuple(airflow_server.version) <= (3, 3, 2)
    ):
        pytest.xfail(
            "Airflow <= 3.3.2: the row Test button sends port 0 for a connection without a port, and the "
            f"server refuses it ({response.json().get('detail')}); test through POST /api/v2/connections/test"
        )
    assert response.status == 200, response.text()
    result = response.json()
    assert result["status"] is True, result["message"]
    assert page.get_by_text(result["message"]).first.is_visible()


def test_hook_meta_describes_the_form(airflow_server: AirflowServer) -> None:
    """``GET /ui/connections/hook_meta``: the data Airflow 3's UI draws the form from."""
    if airflow_server.major < 3:
        pytest.skip("Airflow 2.11 renders the form on the server (checked in the form test)")
    response = requests.get(
        f"{airflow_server.base_url}/ui/connections/hook_meta",
        headers={"Authorization": f"Bearer {airflow_server.token()}"},
        timeout=60,
    )
    response.raise_for_status()
    famulor = next(meta for meta in response.json() if meta["connection_type"] == "famulor")
    assert famulor["hook_name"] == "Famulor"
    assert famulor["hook_class_name"] == "famulor_provider.hooks.famulor.FamulorHook"

    standard = famulor["standard_fields"]
    assert standard["host"] == {"hidden": False, "title": "Base URL", "placeholder": DEFAULT_BASE_URL}
    assert standard["password"]["title"] == "API Key"
    assert standard["password"]["hidden"] is False
    for hidden in ("login", "port", "url_schema"):
        assert standard[hidden]["hidden"] is True, hidden

    extra_fields = famulor["extra_fields"]
    assert set(extra_fields) == set(CONN_FIELDS)
    for name, spec in CONN_FIELDS.items():
        field = extra_fields[name]
        assert field["schema"]["title"] == spec["label"]
        assert field["description"] == spec["description"]
        if is_declarative_form(airflow_server):
            assert field["schema"]["default"] == spec["schema"]["default"]
            assert field["value"] == spec["schema"]["default"]
