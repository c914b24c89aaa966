"""Alert claims: at most one alert per recipient per DAG run, across processes and hosts.

A claim is a file created with ``O_CREAT | O_EXCL``: of any number of callbacks racing for the same
(DAG, run, recipient), exactly one creates it. That holds between processes on one host and
between hosts on a shared volume whose server makes exclusive creation atomic (NFSv3 and later,
EFS; not every FUSE or SMB volume). The file names hold no phone number in clear (a SHA-256 of it);
folders are ``0700`` and files ``0600``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def default_claims_folder() -> Path:
    """``$AIRFLOW_HOME/famulor/alert-claims``: shared by the processes of one host."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.join("~", "airflow")
    return Path(home).expanduser() / "famulor" / "alert-claims"


class AlertClaims:
    """
    Claims of (DAG id, run id, recipient) under ``folder``: one folder per DAG and run.

    :param folder: where the claims live; a shared volume when callbacks run on several hosts.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, dag_id: str, run_id: str, phone: str) -> Path:
        """The claim file of one recipient in one DAG run.

        :param dag_id: the DAG.
        :param run_id: the DAG run.
        :param phone: the recipient (E.164).
        """
        digest = hashlib.sha256(phone.encode()).hexdigest()[:32]
        return self.folder / quote(dag_id, safe="") / quote(run_id, safe="") / digest

    def claim(self, dag_id: str, run_id: str, phone: str) -> bool:
        """Take the claim; ``False`` when another callback already holds it.

        :param dag_id: the DAG.
        :param run_id: the DAG run.
        :param phone: the recipient (E.164).
        """
        path = self.path(dag_id, run_id, phone)
        _make_folders(path.parent)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), FILE_MODE)  # whatever the umask
            holder = {"host": socket.gethostname(), "pid": os.getpid()}
            json.dump({**holder, "at": datetime.now(timezone.utc).isoformat()}, file)
        return True

    def release(self, dag_id: str, run_id: str, phone: str) -> None:
        """Give a claim back (its alert surely did not go out), so a later callback may send it.

        :param dag_id: the DAG.
        :param run_id: the DAG run.
        :param phone: the recipient (E.164).
        """
        self.path(dag_id, run_id, phone).unlink(missing_ok=True)


def _make_folders(folder: Path) -> None:
    """Create ``folder`` and its missing parents with mode ``0700``."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            continue  # another callback made it first
        os.chmod(path, FOLDER_MODE)  # mkdir's mode is masked by the umask
