"""Command line: ``python -m famulor_provider.testing serve [--port-file PATH] ...``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from famulor_provider.testing.sandbox import DEFAULT_SEND_RATE_LIMIT, SANDBOX_API_KEY, FamulorSandbox


def _sender_after(value: str) -> tuple[int, float]:
    sender_id, sep, seconds = value.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(sender_id), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID=SECONDS, e.g. 31=60, not {value!r}") from None


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not rate >= 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of sends per second (0 = off), not {value!r}")
    return rate


def _describe_send_rate_limit(limit: float | None) -> str:
    """How the banner names the send limit, e.g. ``5 sends/s per account`` or ``off``.

    :param limit: the sandbox's ``send_rate_limit``.
    """
    return f"{limit:g} sends/s per account" if limit else "off"


def _write_port_file(path: Path, port: int) -> None:
    # Write then rename, so a reader polling for the file never sees it half written.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="python -m famulor_provider.testing")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the Famulor sandbox until SIGTERM or SIGINT")
    serve.add_argument("--host", default="127.0.0.1", help="a loopback address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="the port (default: 0, a free one)")
    serve.add_argument("--api-key", default=SANDBOX_API_KEY, help="the accepted API key")
    serve.add_argument("--port-file", type=Path, help="write the port here once listening")
    serve.add_argument(
        "--sender-online-after",
        type=_sender_after,
        action="append",
        default=[],
        metavar="ID=SECONDS",
        help="bring sender ID online SECONDS after start (repeatable)",
    )
    serve.add_argument(
        "--send-rate-limit",
        type=_rate,
        default=DEFAULT_SEND_RATE_LIMIT,
        metavar="N",
        help=f"sends allowed per rolling second before a 429, as the API (default: "
        f"{DEFAULT_SEND_RATE_LIMIT}; 0 turns the limit off)",
    )
    args = parser.parse_args(argv)

    try:
        sandbox = FamulorSandbox(
            api_key=args.api_key, host=args.host, port=args.port, send_rate_limit=args.send_rate_limit or None
        )
        for sender_id, seconds in args.sender_online_after:
            sandbox.schedule_sender(sender_id, seconds, status="online")
    except KeyError as exc:
        parser.error(f"--sender-online-after: unknown sender {exc}")
    except ValueError as exc:
        parser.error(str(exc))

    stopping = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with sandbox:
        if args.port_file is not None:
            _write_port_file(args.port_file, sandbox.port)
        limit = _describe_send_rate_limit(sandbox.send_rate_limit)
        print(f"Famulor sandbox listening on {sandbox.base_url} (send rate limit: {limit})", flush=True)
        while not stopping.wait(0.5):
            pass
    print("Famulor sandbox stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
