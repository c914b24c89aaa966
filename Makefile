# airflow-provider-famulor: environments, lint and tests on every supported Airflow line.
#
#   make test                  the suite on the latest Airflow 3.x (.venv)
#   make test-matrix           the suite on every line in AIRFLOW_VERSIONS, each in its own venv
#   make test-airflow-2.11     the suite on one line (2.11, 3.1 or latest)
#   make lint                  ruff check, ruff format --check, mypy (in .venv)
#   make venv                  .venv with the latest Airflow 3.x, -e .[test,dev]
#   make dist                  wheel + sdist in dist/, checked, installed into a fresh venv
#   make airflow-db            a migrated SQLite DB in .airflow/latest/ for the airflow CLI
#   make lock                  resolve every line's lock file again (then review the diff and commit)
#
# Lines: "latest" is the newest Airflow 3.x in .venv; any other line X.Y is apache-airflow==X.Y.*
# in .venv-X.Y. Each line installs exactly its committed lock file .ci/constraints/airflow-<line>.txt
# (resolved by `make lock` from pyproject.toml, every extra, and .ci/constraints/airflow-<line>.in),
# so a new upstream release changes nothing until a lock is refreshed on purpose. A venv is rebuilt
# when pyproject.toml or its lock changes (stamp file .installed).
# Recipes export AIRFLOW_HOME=.airflow/<line>/ (SQLite, no examples, dags folder example_dags/);
# pytest itself runs each session in a temporary home seeded from .airflow/test-db/ (tests/conftest.py).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := venv
.SECONDEXPANSION:

PYTHON ?= python3
UV := $(PYTHON) -m uv
AIRFLOW_VERSIONS ?= 2.11 3.1 latest
PYTEST_ARGS ?=
LINT_PATHS := $(wildcard famulor_provider tests example_dags benchmarks)

venv_dir = $(if $(filter latest,$(1)),.venv,.venv-$(1))
LOCK_DIR := .ci/constraints
lock_file = $(LOCK_DIR)/airflow-$(1).txt
airflow_env = AIRFLOW_HOME=$(CURDIR)/.airflow/$(1) \
	AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///$(CURDIR)/.airflow/$(1)/airflow.db \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/example_dags

.PHONY: venv lint test test-matrix airflow-db uv lock
.PRECIOUS: .venv-%/.installed .airflow/%/airflow.db

venv: .venv/.installed

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv

# lock: every line's lock file, resolved for this machine's Python from pyproject.toml (all extras)
# and the line's .in file. One line: make lock-2.11.
lock: $(foreach line,$(AIRFLOW_VERSIONS),lock-$(line))

lock-%: | uv
	$(UV) pip compile --quiet --python $(PYTHON) --all-extras --no-emit-package airflow-provider-famulor \
		--custom-compile-command 'make lock-$*' \
		pyproject.toml $(LOCK_DIR)/airflow-$*.in -o $(call lock_file,$*)

# A venv is its line's lock, exactly (uv pip sync removes anything else), plus the provider in
# editable mode without resolving again; `uv pip check` fails when pyproject.toml asks for something
# the lock lacks (run make lock). --compile-bytecode: PYTHONDONTWRITEBYTECODE=1 is set on our
# machines, so without it every process would compile Airflow's sources again.
define install_venv
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(2)
	$(UV) pip sync --quiet --compile-bytecode --python $(2)/bin/python $(call lock_file,$(1))
	$(UV) pip install --quiet --no-deps --python $(2)/bin/python -e .
	@$(UV) pip check --quiet --python $(2)/bin/python \
		|| { echo "$(2) does not satisfy pyproject.toml: run make lock-$(1)"; exit 1; }
	@$(2)/bin/python -c 'import importlib.metadata as m, sys; \
		print("$(2): Airflow", m.version("apache-airflow"), "Python", sys.version.split()[0])'
	@touch $(2)/.installed
endef

.venv/.installed: pyproject.toml $(call lock_file,latest) | uv
	$(call install_venv,latest,.venv)

.venv-%/.installed: pyproject.toml $(LOCK_DIR)/airflow-%.txt | uv
	$(call install_venv,$*,.venv-$*)

lint: .venv/.installed
	@status=0; \
	.venv/bin/ruff check $(LINT_PATHS) || status=1; \
	.venv/bin/ruff format --check $(LINT_PATHS) || status=1; \
	.venv/bin/mypy || status=1; \
	exit $$status

test: test-airflow-latest

test-airflow-%: $$(call venv_dir,$$*)/.installed
	@mkdir -p .airflow/$*
	$(call airflow_env,$*) $(call venv_dir,$*)/bin/python -m pytest $(PYTEST_ARGS)

# Every line runs even when one fails; the summary names the failing ones.
test-matrix:
	@failed=""; \
	for line in $(AIRFLOW_VERSIONS); do \
		echo "=== Airflow $$line ==="; \
		$(MAKE) --no-print-directory test-airflow-$$line || failed="$$failed $$line"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix failed on Airflow:$$failed"; exit 1; fi; \
	echo "test-matrix passed on Airflow: $(AIRFLOW_VERSIONS)"

# dist: the wheel and sdist in dist/ (python -m build, its isolated build env made by uv), checked
# with `twine check --strict` and .ci/check_dist.py (LICENSE in both archives, classifiers, entry
# point, the README's images in the sdist); then the wheel is installed with the latest Airflow 3.x
# (constrained by the latest line's lock) into a fresh temporary venv whose `airflow providers list`
# must name the provider and version.
DIST_AIRFLOW ?= apache-airflow>=3,<4

.PHONY: dist
dist: .venv/.installed
	rm -rf dist
	.venv/bin/python -m build --installer uv --outdir dist . >/dev/null
	.venv/bin/twine check --strict dist/*
	.venv/bin/python .ci/check_dist.py dist
	@set -euo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	version=$$(.venv/bin/python -c 'import famulor_provider; print(famulor_provider.__version__)'); \
	$(UV) venv --quiet --python $(PYTHON) "$$tmp/venv"; \
	$(UV) pip install --quiet --python "$$tmp/venv/bin/python" -c $(call lock_file,latest) dist/*.whl '$(DIST_AIRFLOW)'; \
	listed=$$(AIRFLOW_HOME="$$tmp/home" "$$tmp/venv/bin/airflow" providers list -o plain 2>"$$tmp/stderr") \
		|| { cat "$$tmp/stderr"; exit 1; }; \
	echo "$$listed" | awk -v v="$$version" '$$1 == "airflow-provider-famulor" && $$NF == v {print; found=1} END {exit !found}' \
		|| { echo "airflow providers list does not name airflow-provider-famulor $$version:"; echo "$$listed"; exit 1; }; \
	echo "dist: $$(ls dist | tr '\n' ' ')installed with $$("$$tmp/venv/bin/airflow" version 2>/dev/null | tail -1) in a fresh venv"

# The airflow CLI's own home for a line (AIRFLOW_LINE, default latest): what `make demo` and the
# system test build on. Migrated again when the venv changes.
AIRFLOW_LINE ?= latest
airflow-db: .airflow/$(AIRFLOW_LINE)/airflow.db

.airflow/%/airflow.db: $$(call venv_dir,$$*)/.installed
	@mkdir -p $(@D)
	$(call airflow_env,$*) $(call venv_dir,$*)/bin/airflow db migrate >$(@D)/migrate.log 2>&1 \
		|| { cat $(@D)/migrate.log; exit 1; }
	@touch $@

# test-ui: browser tests of the Famulor connection form (tests/ui) on each line in
# UI_AIRFLOW_VERSIONS: Debian's Chromium (installed with apt-get if missing) driven by Playwright
# (the pip package, in every lock; never `playwright install`); the tests start the line's web
# server and the Famulor sandbox on 127.0.0.1. Screenshots in artifacts/ui/; FAMULOR_UI_UPDATE_DOCS=1 also
# refreshes docs/connection-form.png (from Airflow 3).
UI_AIRFLOW_VERSIONS ?= latest 2.11
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: chromium test-ui

chromium:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test-ui: chromium $(foreach line,$(UI_AIRFLOW_VERSIONS),$(call venv_dir,$(line))/.installed)
	@failed=""; \
	for line in $(UI_AIRFLOW_VERSIONS); do \
		venv=$$( [ "$$line" = latest ] && echo .venv || echo .venv-$$line ); \
		echo "=== UI tests on Airflow $$line ==="; \
		FAMULOR_UI_TESTS=1 FAMULOR_UI_CHROMIUM=$(CHROMIUM) $$venv/bin/python -m pytest tests/ui -rxs \
			$(PYTEST_ARGS) || failed="$$failed $$line"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-ui failed on Airflow:$$failed"; exit 1; fi; \
	echo "test-ui passed on Airflow: $(UI_AIRFLOW_VERSIONS)"

# test-system: real deployments per line in SYSTEM_AIRFLOW_VERSIONS (tests/system, harness in
# tests/system/deployment.py), on 127.0.0.1 in a temporary home, every process stopped by its id:
# - the famulor_wait_for_sender example DAG (scheduler + triggerer, + api-server and dag-processor
#   on Airflow 3): the sensor deferred and resumed. About 30-60 s per line.
# - the famulor_whatsapp_confirmation example DAG: the reply sensor deferred, the triggerer polled
#   the conversations, and it resumed in the same try when the sandbox's customer answered.
#   About 45-80 s per line.
# - latest line only: the CeleryExecutor with Debian's redis-server (installed with apt-get if
#   missing) and two workers; the worker running a task is SIGKILLed mid-try and the retry
#   succeeds on the other one. About 2 minutes. Other lines skip it (2.11 refuses SQLite with the
#   CeleryExecutor). The celery provider and celery come with the latest line's lock.
# - Airflow 3.1+: the webhook receiver in a real api-server; the sandbox posts signed receipts
#   while the api-server is SIGKILLed and restarted (none lost), a locked DB (503, then delivered),
#   forged, replayed, oversized and malformed requests (no event), the token never in the access log.
# - Airflow 3.3+ only: the famulor_whatsapp_inbound example DAG; the sandbox's customers write while
#   the triggerer is SIGKILLed and restarted three times; every message has an asset event (at
#   most one extra per kill, same dedupe_key) handled by a successful DAG run. About 4 minutes.
# - Airflow 3.1+ only: a campaign of 200 whose receipts the sandbox posts to the api-server's
#   webhook receiver; WhatsAppDeliverySensor, the delivery report (its counts equal what the
#   sandbox delivered) and a fallback campaign to the failed ones only. About 2 minutes.
SYSTEM_AIRFLOW_VERSIONS ?= $(AIRFLOW_VERSIONS)
REDIS_SERVER ?= /usr/bin/redis-server

.PHONY: test-system redis-server

redis-server:
	@test -x $(REDIS_SERVER) || { echo "installing Debian's redis-server"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

test-system: $(if $(filter latest,$(SYSTEM_AIRFLOW_VERSIONS)),redis-server) \
		$(foreach line,$(SYSTEM_AIRFLOW_VERSIONS),$(call venv_dir,$(line))/.installed)
	@failed=""; \
	for line in $(SYSTEM_AIRFLOW_VERSIONS); do \
		venv=$$( [ "$$line" = latest ] && echo .venv || echo .venv-$$line ); \
		echo "=== system test on Airflow $$line ==="; \
		FAMULOR_SYSTEM_TEST=1 $$venv/bin/python -m pytest tests/system -rs -s $(PYTEST_ARGS) \
			|| failed="$$failed $$line"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-system failed on Airflow:$$failed"; exit 1; fi; \
	echo "test-system passed on Airflow: $(SYSTEM_AIRFLOW_VERSIONS)"

# demo: the sandbox (or the real API with FAMULOR_API_KEY), the example DAGs with `airflow dags
# test` on .airflow/latest/, then what reached XCom. The sandbox's customer answers YES 3 s after
# each send (famulor_whatsapp_confirmation waits for it and prints the branch it took). For the
# webhook DAGs an api-server (one worker) with the provider's receiver plugin listens on
# 127.0.0.1: the sandbox posts its signed delivery receipts there (+14155550113 fails with 131049,
# +14155550114 is never delivered; delays x0.2) and one ended conversation, which the receiver
# records as asset events; famulor_whatsapp_delivery_fallback waits for them (15 s at most) and
# falls back for the two, famulor_conversation_ended reads the ended conversation. The sandbox and
# the api-server are stopped by PID (the api-server's process group) on exit.
define PRINT_XCOM
import json, sqlite3, sys
db, dag_id = sys.argv[1], sys.argv[2]
con = sqlite3.connect(db)
run_id = con.execute("SELECT run_id FROM dag_run WHERE dag_id=? ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()[0]
rows = con.execute(
    "SELECT x.task_id, x.map_index, x.value FROM xcom x JOIN dag_run r ON r.id = x.dag_run_id "
    "WHERE r.run_id=? AND x.dag_id=? AND x.key='return_value' ORDER BY x.task_id, x.map_index",
    (run_id, dag_id),
).fetchall()
print(f"--- XCom of {dag_id} ({run_id}) ---")
for task_id, map_index, value in rows:
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    label = task_id if map_index < 0 else f"{task_id}[{map_index}]"
    if isinstance(value, list) and value and isinstance(value[0], dict) and "phone_number" in value[0]:
        print(f"{label}: {len(value)} sender(s)")
        for s in value:
            print(f"  {s['id']:>4}  {s['phone_number']:<15} {s['status']:<8} {s['quality_rating'] or '-':<7} "
                  f"{'unlimited' if s['messaging_limit'] is None else s['messaging_limit']}")
    else:
        print(f"{label}: {json.dumps(value)}")
endef
export PRINT_XCOM

# demo: the WhatsApp messages the sandbox accepted since the last call (position kept in a file).
define PRINT_LEDGER
import json, pathlib, sys, urllib.request
base, mark = sys.argv[1], pathlib.Path(sys.argv[2])
since = int(mark.read_text()) if mark.exists() else 0
page = json.load(urllib.request.urlopen(f"{base}/_sandbox/ledger?since={since}"))
mark.write_text(str(page["next_since"]))
print(f"--- the sandbox accepted {len(page['data'])} WhatsApp message(s) ---")
for m in page["data"]:
    body = repr(m["message"]) if m["kind"] == "freeform" else f"template {m['template_id']} {json.dumps(m['variables'])}"
    print(f"  {m['message_id']}  {m['recipient_phone']:<15} {body}")
endef
export PRINT_LEDGER

# demo: a GET that fails on any error, and a JSON POST (no curl needed).
HTTP_GET := import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)
HTTP_POST_JSON := import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], \
	data=sys.argv[2].encode(), headers={"Content-Type": "application/json"}), timeout=10)
export HTTP_GET HTTP_POST_JSON

.PHONY: demo
demo: .airflow/latest/airflow.db
	@set -euo pipefail; home=$(CURDIR)/.airflow/latest; \
	if [ -n "$${FAMULOR_API_KEY:-}" ]; then \
		echo "Using the real Famulor API (FAMULOR_API_KEY is set); the sending DAG is skipped."; \
		export AIRFLOW_CONN_FAMULOR_DEFAULT=$$(.venv/bin/python -c 'import json, os; print(json.dumps({"conn_type": "famulor", "password": os.environ["FAMULOR_API_KEY"], "host": os.environ.get("FAMULOR_BASE_URL", "")}))'); \
		dags="famulor_whatsapp_senders"; \
	else \
		port_file=$$(mktemp); rm -f $$port_file; \
		api_port=$$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
		token=$$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))'); \
		hooks=http://127.0.0.1:$$api_port/famulor/webhooks/famulor_default; \
		.venv/bin/python -m famulor_provider.testing serve --port 0 --port-file $$port_file \
			--customer-reply YES --customer-reply-after 3 \
			--status-webhook 12=$$hooks/message-status --webhook-time-scale 0.2 \
			--recipient-outcome +14155550113=failed:131049 --recipient-outcome +14155550114=sent \
			--conversation-ended-url $$hooks/conversation-ended/$$token >$$home/sandbox.log 2>&1 & pid=$$!; \
		trap 'kill $$pid 2>/dev/null || true; wait $$pid 2>/dev/null || true; rm -f $$port_file; \
			if [ -n "$${api_pid:-}" ]; then kill -- -$$api_pid 2>/dev/null || true; wait $$api_pid 2>/dev/null || true; fi' EXIT; \
		for _ in $$(seq 100); do [ -s $$port_file ] && break; sleep 0.1; done; \
		[ -s $$port_file ] || { echo "sandbox did not start"; cat $$home/sandbox.log; exit 1; }; \
		port=$$(cat $$port_file); echo "Sandbox (PID $$pid) on http://127.0.0.1:$$port/api"; \
		export AIRFLOW_CONN_FAMULOR_DEFAULT="{\"conn_type\": \"famulor\", \"host\": \"http://127.0.0.1:$$port/api\", \"password\": \"sandbox-api-key\", \"extra\": {\"webhook_signing_secrets\": \"sandbox-webhook-signing-secret\", \"webhook_token\": \"$$token\"}}"; \
		$(call airflow_env,latest) setsid .venv/bin/airflow api-server --host 127.0.0.1 --port $$api_port --workers 1 \
			>$$home/api-server.log 2>&1 & api_pid=$$!; \
		echo "api-server with the webhook receiver (PID $$api_pid) on http://127.0.0.1:$$api_port"; \
		rm -f $$home/ledger.since; \
		dags="famulor_whatsapp_senders famulor_whatsapp_campaign famulor_whatsapp_per_recipient famulor_alert_on_failure famulor_whatsapp_confirmation famulor_whatsapp_delivery_fallback famulor_conversation_ended"; \
		export FAMULOR_EXAMPLE_POKE_INTERVAL=1 FAMULOR_EXAMPLE_DELIVERY_TIMEOUT=15; \
	fi; \
	for dag in $$dags; do \
		if [ -n "$${api_pid:-}" ] && [ "$$dag" = famulor_whatsapp_delivery_fallback ]; then \
			for _ in $$(seq 180); do .venv/bin/python -c "$$HTTP_GET" http://127.0.0.1:$$api_port/api/v2/monitor/health 2>/dev/null && break; sleep 0.5; done; \
			.venv/bin/python -c "$$HTTP_GET" http://127.0.0.1:$$api_port/api/v2/monitor/health 2>/dev/null \
				|| { echo "api-server did not start"; tail -30 $$home/api-server.log; exit 1; }; \
		fi; \
		if [ -n "$${api_pid:-}" ] && [ "$$dag" = famulor_conversation_ended ]; then \
			echo "--- the sandbox ends the conversation with +14155550111 (its webhook goes to the receiver) ---"; \
			.venv/bin/python -c "$$HTTP_POST_JSON" http://127.0.0.1:$$port/_sandbox/webhooks/conversation-ended \
				'{"sender_phone": "+14155551234", "customer_phone": "+14155550111", "extracted_variables": {"order": "A-2001", "delivery_day": "Tuesday", "wants_callback": true}}'; \
			sleep 2; \
		fi; \
		echo "=== airflow dags test $$dag ==="; \
		$(call airflow_env,latest) .venv/bin/airflow dags test $$dag >$$home/demo-$$dag.log 2>&1 \
			|| { tail -50 $$home/demo-$$dag.log; exit 1; }; \
		.venv/bin/python -c "$$PRINT_XCOM" $$home/airflow.db $$dag; \
		if [ -n "$${port:-}" ]; then .venv/bin/python -c "$$PRINT_LEDGER" http://127.0.0.1:$$port $$home/ledger.since; fi; \
	done
