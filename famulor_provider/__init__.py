"""Apache Airflow provider for the Famulor API (WhatsApp Business senders and messaging)."""

from __future__ import annotations

__version__ = "0.1.0"
