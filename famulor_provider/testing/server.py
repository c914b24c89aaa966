"""The sandbox's HTTP server: threads, loopback-only binding, and the request handler."""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from famulor_provider.testing.sandbox import FamulorSandbox

log = logging.getLogger("famulor_provider.testing.sandbox")


def loopback_host(host: str) -> str:
    """The address to bind; anything but a loopback address is refused (the sandbox has no TLS)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"The sandbox only listens on a loopback address (127.0.0.1, ::1), not {host!r}")


class Server(ThreadingHTTPServer):
    # A request held by a "delay" or "hang" fault, or an idle client, must not block stop():
    # server_close() would otherwise join every handler thread.
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog is 5: twenty clients connecting at once (an alert storm)
    # overflowed it, and Linux then resets a connection whose client had already written its
    # request: a send reported "delivery unknown" by a server the real API does not resemble.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: FamulorSandbox) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sandbox = sandbox
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall; we need none.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout during a "delay" fault) is routine here, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("Famulor sandbox: client %s went away", client_address)
        else:
            log.exception("Famulor sandbox failed to answer %s", client_address)


class RequestHandler(BaseHTTPRequestHandler):
    server: Server
    server_version = "FamulorSandbox"
    sys_version = ""
    timeout = 10  # an idle client must not hold a thread forever

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        raw_body = self.rfile.read(length) if length > 0 else b""
        authorization = self.headers.get("Authorization")
        reply = self.server.sandbox.handle(self.command, self.path, authorization, raw_body)
        if reply is None:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line only (no headers, so never the API key), at DEBUG instead of stderr.
        message = format % args
        log.debug("sandbox %s: %s", self.address_string(), message)
