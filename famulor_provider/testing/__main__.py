"""Command line: ``python -m famulor_provider.testing serve [--port-file PATH] ...`` and ``... receive``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from famulor_provider.testing.sandbox import DEFAULT_SEND_RATE_LIMIT, SANDBOX_API_KEY, FamulorSandbox
from famulor_provider.testing.webhooks import SANDBOX_WEBHOOK_SECRET

if TYPE_CHECKING:
    from collections.abc import Callable


def _sender_after(value: str) -> tuple[int, float]:
    sender_id, sep, seconds = value.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(sender_id), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID=SECONDS, e.g. 31=60, not {value!r}") from None


def _pair(example: str) -> Callable[[str], tuple[str, str]]:
    def parse(value: str) -> tuple[str, str]:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise argparse.ArgumentTypeError(f"expected {example}, not {value!r}")
        return key, rest

    return parse


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not rate >= 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of sends per second (0 = off), not {value!r}")
    return rate


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds (at least 0), not {value!r}")
    return seconds


def _control_url(url: str) -> str:
    """The control API's URL from a sandbox URL, with or without its ``/api`` suffix.

    :param url: e.g. ``http://127.0.0.1:8080`` or ``http://127.0.0.1:8080/api``.
    """
    return url.rstrip("/").removesuffix("/api") + "/_sandbox"


def receive(args: argparse.Namespace) -> int:
    """``receive``: a customer writes, through a running sandbox's control API.

    :param args: the parsed ``receive`` arguments.
    """
    body: dict[str, Any] = {
        "sender_phone": args.sender_phone,
        "customer_phone": args.customer_phone,
        "text": args.text,
        "customer_name": args.customer_name,
        "assistant_reply": args.assistant_reply,
    }
    if args.after_seconds is not None:
        body["after_seconds"] = args.after_seconds
    request = Request(
        _control_url(args.url) + "/conversations/receive",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urlopen(request, timeout=10) as response:
            print(response.read().decode(), flush=True)
    except HTTPError as exc:
        message = json.loads(exc.read() or b"{}").get("message", exc.reason)
        print(f"The sandbox refused the message: {message}", file=sys.stderr)
        return 1
    except URLError as exc:
        print(f"No sandbox answers at {args.url}: {exc.reason}", file=sys.stderr)
        return 1
    return 0


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
    serve.add_argument(
        "--customer-reply",
        metavar="TEXT",
        help="the customer of every accepted send answers TEXT (after --customer-reply-after seconds)",
    )
    serve.add_argument(
        "--customer-reply-after",
        type=_seconds,
        default=3.0,
        metavar="SECONDS",
        help="how long the customer takes to answer (default: 3)",
    )
    serve.add_argument(
        "--status-webhook",
        type=_pair("SENDER_ID=URL"),
        action="append",
        default=[],
        metavar="SENDER_ID=URL",
        help="post the delivery receipts of the sender's messages to URL (repeatable)",
    )
    serve.add_argument(
        "--webhook-secret",
        type=_pair("SENDER_ID=SECRET"),
        action="append",
        default=[],
        metavar="SENDER_ID=SECRET",
        help=f"the sender's signing secret (repeatable; default {SANDBOX_WEBHOOK_SECRET!r})",
    )
    serve.add_argument(
        "--recipient-outcome",
        type=_pair("PHONE=OUTCOME"),
        action="append",
        default=[],
        metavar="PHONE=OUTCOME",
        help="what becomes of messages to PHONE: read (default), delivered, failed[:CODE] or "
        "undelivered[:CODE], e.g. +4915100000001=failed:131049 (repeatable)",
    )
    serve.add_argument("--conversation-ended-url", metavar="URL", help="where ended conversations are posted")
    serve.add_argument(
        "--webhook-time-scale",
        type=_rate,
        default=1.0,
        metavar="FACTOR",
        help="multiplies every webhook delay, Famulor's 30/60/120 s retries included (default: 1)",
    )
    write = commands.add_parser("receive", help="make a customer write to a running sandbox")
    write.add_argument("--url", required=True, help="the sandbox, e.g. http://127.0.0.1:8080/api")
    write.add_argument("--sender-phone", required=True, help="the sender's phone_number, e.g. +14155551234")
    write.add_argument("--customer-phone", required=True, help="the customer's number, E.164")
    write.add_argument("--text", required=True, help="the customer's message")
    write.add_argument("--customer-name", help="the customer's name")
    write.add_argument("--assistant-reply", help="an assistant message right after the customer's")
    write.add_argument("--after-seconds", type=_seconds, metavar="SECONDS", help="deliver it this much later")
    args = parser.parse_args(argv)
    if args.command == "receive":
        return receive(args)

    try:
        customer_reply = (
            None if args.customer_reply is None else (args.customer_reply, args.customer_reply_after)
        )
        sandbox = FamulorSandbox(
            api_key=args.api_key,
            host=args.host,
            port=args.port,
            send_rate_limit=args.send_rate_limit or None,
            customer_reply=customer_reply,
            webhook_time_scale=args.webhook_time_scale,
            conversation_ended_url=args.conversation_ended_url,
        )
        for sender_id, seconds in args.sender_online_after:
            sandbox.schedule_sender(sender_id, seconds, status="online")
    except KeyError as exc:
        parser.error(f"--sender-online-after: unknown sender {exc}")
    except ValueError as exc:
        parser.error(str(exc))
    try:
        secrets = {int(sender_id): secret for sender_id, secret in args.webhook_secret}
        for sender_id, url in args.status_webhook:
            sandbox.set_status_webhook(
                int(sender_id), url, secrets.get(int(sender_id), SANDBOX_WEBHOOK_SECRET)
            )
        for phone, outcome in args.recipient_outcome:
            sandbox.set_recipient_outcome(phone, outcome)
    except KeyError as exc:
        parser.error(f"--status-webhook: unknown sender {exc}")
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
        reply = (
            ""
            if customer_reply is None
            else f", customers reply {customer_reply[0]!r} after {customer_reply[1]:g} s"
        )
        print(
            f"Famulor sandbox listening on {sandbox.base_url} (send rate limit: {limit}{reply})", flush=True
        )
        while not stopping.wait(0.5):
            pass
    print("Famulor sandbox stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
