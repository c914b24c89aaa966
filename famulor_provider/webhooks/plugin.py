"""The Airflow plugin that mounts the webhook receiver in the api-server (Airflow 3.1+).

Registered under the ``airflow.plugins`` entry point, so every Airflow process loads it (provider
info ``plugins`` load only with ``[core] lazy_load_providers = False``). The FastAPI app is built
only when the api-server asks for ``fastapi_apps``: other processes import nothing more than this
module. Airflow 2.11 and 3.0 have no FastAPI plugin apps: there the plugin mounts nothing.
"""

from __future__ import annotations

import functools
from typing import Any

from airflow.plugins_manager import AirflowPlugin


@functools.cache
def _apps() -> list[dict[str, Any]]:
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS

    if not AIRFLOW_V_3_1_PLUS:
        return []
    from famulor_provider.webhooks.receiver import URL_PREFIX, create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Famulor webhooks"}]


class FamulorWebhooksPlugin(AirflowPlugin):
    """Mounts ``/famulor/webhooks/...`` (see ``famulor_provider.webhooks.receiver``)."""

    name = "famulor_webhooks"

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return _apps()
