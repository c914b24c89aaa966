"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from famulor_provider import __version__

DEFAULT_BASE_URL = "https://app.famulor.de/api"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 5
# Polling for replies spends at most half of the account's documented 100 requests per minute
# (connection extra ``poll_requests_per_minute``; not in the form, set it in the extra JSON).
DEFAULT_POLL_REQUESTS_PER_MINUTE = 50.0

# The Famulor connection form. Airflow 3.2+ draws it from this data without importing the
# hook; FamulorHook's legacy classmethods describe the same form for 2.11 and 3.1.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "timeout": {
        "label": "Timeout",
        "schema": {"type": ["number", "null"], "default": DEFAULT_TIMEOUT, "exclusiveMinimum": 0},
        "description": "Seconds one attempt may take in all, from connecting to the last byte of the answer.",
    },
    "max_retries": {
        "label": "Max retries",
        "schema": {"type": ["integer", "null"], "default": DEFAULT_MAX_RETRIES, "minimum": 0},
        "description": "Retries of a read (429, 5xx, timeouts) before the task fails.",
    },
    "verify_ssl": {
        "label": "Verify SSL",
        "schema": {"type": ["boolean", "null"], "default": True},
        "description": "Verify the server's TLS certificate. Leave on.",
    },
}
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "schema", "port", "extra"],
    "relabeling": {"host": "Base URL", "password": "API Key"},
    "placeholders": {
        "host": DEFAULT_BASE_URL,
        "password": "Famulor API key",
    },
}


# Options of the [famulor] section, in Airflow's provider config format (`airflow config list`).
CONFIG: dict[str, Any] = {
    "famulor": {
        "description": "Famulor provider settings.",
        "options": {
            "log_full_phone_numbers": {
                "description": "Show full phone numbers in per-recipient INFO log lines and error texts. "
                "Off: they show masked (+49151****23); full numbers are logged at DEBUG only. "
                "Phone numbers are personal data: turn this on only where the task logs may hold them.",
                "version_added": "0.2.0",
                "type": "boolean",
                "example": "True",
                "default": "False",
            },
        },
    }
}


def get_provider_info() -> dict[str, Any]:
    """Describe the provider, its modules and its connection type to Airflow."""
    return {
        "package-name": "airflow-provider-famulor",
        "name": "Famulor",
        "description": "Famulor AI voice and WhatsApp automation: senders, templates and sends.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Famulor",
                "external-doc-url": "https://docs.famulor.io",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "Famulor", "python-modules": ["famulor_provider.hooks.famulor"]}],
        "operators": [
            {
                "integration-name": "Famulor",
                "python-modules": [
                    "famulor_provider.operators.whatsapp",
                    "famulor_provider.operators.delivery",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Famulor",
                "python-modules": ["famulor_provider.sensors.whatsapp", "famulor_provider.sensors.delivery"],
            }
        ],
        "triggers": [
            {"integration-name": "Famulor", "python-modules": ["famulor_provider.triggers.whatsapp"]}
        ],
        "notifications": ["famulor_provider.notifications.whatsapp.WhatsAppNotifier"],
        "config": CONFIG,
        "connection-types": [
            {
                "hook-class-name": "famulor_provider.hooks.famulor.FamulorHook",
                "hook-name": "Famulor",
                "connection-type": "famulor",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }
