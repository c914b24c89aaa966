"""One try of a campaign task in its own process, as a pod of its own would run it.

``python campaign_pod.py LEDGER_PATH TRY_NUMBER RECIPIENTS RATE``: runs
``SendWhatsAppCampaignOperator.execute`` for the task instance ``famulor_pods / manual__pods /
campaign`` with ``RECIPIENTS`` phones (``+1415700xxxx``) at ``RATE`` sends/s. The Famulor and
AWS connections come from the environment (``AIRFLOW_CONN_*``), ``AIRFLOW_HOME`` is the pod's
own folder. Prints ``started <pid>`` once running, then one JSON line: the summary, or the error.
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

DAG_ID, RUN_ID, TASK_ID = "famulor_pods", "manual__pods", "campaign"


def phones(count: int) -> list[str]:
    return [f"+1415700{n:04d}" for n in range(count)]


def main() -> None:
    ledger_path, try_number, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator

    operator = SendWhatsAppCampaignOperator(
        task_id=TASK_ID,
        sender_id=12,
        template_id=1201,
        recipients=[{"recipient_phone": phone, "variables": {"1": "A"}} for phone in phones(count)],
        ledger_path=ledger_path,
        max_sends_per_second=rate,
        check_messaging_limit=False,
    )
    ti = SimpleNamespace(dag_id=DAG_ID, run_id=RUN_ID, task_id=TASK_ID, map_index=-1, try_number=try_number)
    print(f"started {os.getpid()}", flush=True)
    try:
        summary = operator.execute({"ti": ti})  # type: ignore[arg-type]
    except Exception as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        print(json.dumps({"error": type(cause).__name__, "message": str(err)}), flush=True)
        sys.exit(1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
