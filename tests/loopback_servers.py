"""
Misbehaving HTTP(S) servers on 127.0.0.1 for transport-fault tests, and bounded-call guards.

Each server is a context manager: it listens on an ephemeral port, serves every connection
in its own thread and records what it got (``connections``, ``handshakes``, ``requests``).
Every loop polls a stop flag, so leaving the ``with`` block ends all threads (and closes the
connections of clients still waiting) and joins them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import select
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from famulor_provider.testing import SEED_SENDERS

T = TypeVar("T")

POLL = 0.1  # how often a blocked server loop looks at the stop flag
JOIN_TIMEOUT = 5.0
SENDER = SEED_SENDERS[0]  # sender 12, online
SENDERS_BODY = json.dumps({"data": [SENDER]}).encode()
SEND_BODY = json.dumps({"success": True, "message_id": 1001, "status": "queued"}).encode()
DEADLINE = 2.0  # the connection's timeout in the hook's transport tests: the whole-attempt deadline
GUARD = 12.0  # a hang fails the test after this instead of blocking the suite
SEND_ARGS = (12, 1201, "+14155550101")  # sender, template, recipient of a send

both_paths = pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the server decrypted and parsed it."""

    method: str
    path: str
    body: bytes


def http_response(body: bytes) -> tuple[bytes, bytes]:
    """The head and body of a ``200 OK`` JSON answer."""
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode(), body


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 / localhost and its key; their paths.

    :param directory: where to write ``cert.pem`` and ``key.pem``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Channel:
    """Plain or TLS byte stream over one accepted socket; TLS runs over memory BIOs, so the raw
    socket stays reachable (to write non-TLS bytes after a handshake)."""

    def __init__(self, server: LoopbackServer, sock: socket.socket, context: ssl.SSLContext | None) -> None:
        self.server = server
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = (
            None if context is None else context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        )

    def recv_raw(self, until: float = float("inf")) -> bytes:
        """Bytes from the socket; ``b""`` when the client closed, the server stops or ``until``
        (a ``time.monotonic()``) has passed."""
        while not self.server.stopped.is_set() and time.monotonic() < until:
            try:
                return self.sock.recv(65536)
            except TimeoutError:
                continue
        return b""

    def _pump(self, operation: Callable[[], T]) -> T:
        """Run a TLS operation, moving bytes between the socket and the BIOs until it completes."""
        assert self.tls is not None
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                self.flush()
                data = self.recv_raw()
                if not data:
                    raise ConnectionError("the client closed the connection") from None
                self.incoming.write(data)
            else:
                self.flush()
                return result

    def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def handshake(self) -> None:
        if self.tls is not None:
            self._pump(self.tls.do_handshake)
            with self.server.lock:
                self.server.handshakes += 1

    def recv(self) -> bytes:
        if self.tls is None:
            return self.recv_raw()
        tls = self.tls
        try:
            return self._pump(lambda: tls.read(65536))
        except (ssl.SSLZeroReturnError, ConnectionError):
            return b""

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
        else:
            self.tls.write(data)
            self.flush()

    def close_after_client(self, limit: float = 2.0) -> None:
        """Half-close, then read until the client closes (so it reads all we wrote, not a reset)."""
        self.sock.shutdown(socket.SHUT_WR)
        until = time.monotonic() + limit
        while self.recv_raw(until):
            pass

    def read_request(self) -> RecordedRequest | None:
        """Read one HTTP request (head and ``Content-Length`` body) and record it; None at EOF."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.recv()
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        length = int(headers.get("content-length") or 0)
        while len(body) < length:
            chunk = self.recv()
            if not chunk:
                return None
            body += chunk
        request = RecordedRequest(method, path, body[:length])
        with self.server.lock:
            self.server.requests.append(request)
        return request


class LoopbackServer:
    """Base of the servers: listener, accept loop, one thread per connection, records, stop.

    :param tls: serve TLS with a self-signed certificate made for this server (``cert_path``).
    """

    def __init__(self, *, tls: bool = False) -> None:
        self.tls = tls
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.connections = 0
        self.handshakes = 0
        self.requests: list[RecordedRequest] = []
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._tmp = Path(tempfile.mkdtemp(prefix="famulor-loopback-"))
        self.cert_path, key_path = self_signed_cert(self._tmp) if tls else (None, None)
        self._context: ssl.SSLContext | None = None
        if tls:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(self.cert_path, key_path)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        """The base URL to put in the connection's host."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/api"

    def methods(self) -> list[str]:
        """The methods of the recorded requests, in order."""
        with self.lock:
            return [r.method for r in self.requests]

    def serve(self, channel: _Channel) -> None:
        raise NotImplementedError

    def __enter__(self) -> LoopbackServer:
        self._start(self._accept_loop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self._threads[0].join(JOIN_TIMEOUT)  # the accept loop: no new connection after this
        with self.lock:
            for sock in self._sockets:  # wake up handlers, and clients still waiting for bytes
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)
        self._listener.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"{type(self).__name__} threads did not stop: {alive}")

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"{type(self).__name__}")
        with self.lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(POLL)
            with self.lock:
                self.connections += 1
                self._sockets.add(sock)
            self._start(self._handle, sock)

    def _handle(self, sock: socket.socket) -> None:
        try:
            with sock:
                self.serve(_Channel(self, sock, self._context))
        except (OSError, ValueError):  # SSLError, ConnectionError: the client failed or went away
            pass
        finally:
            with self.lock:
                self._sockets.discard(sock)


class DripServer(LoopbackServer):
    """Answers each request with a valid ``200 OK`` JSON, one byte every ``interval`` seconds.

    The drip ends when the client disconnects or the server stops.

    :param interval: seconds between two bytes.
    :param body: the JSON body; default: a one-sender listing for a GET, a send success for a POST.
    :param head_at_once: send the status line and headers at once and drip only the body.
    :param tls: serve TLS (self-signed certificate: the client needs ``verify_ssl: false``).
    """

    def __init__(
        self,
        interval: float = 1.0,
        body: bytes | None = None,
        *,
        head_at_once: bool = False,
        tls: bool = False,
    ) -> None:
        super().__init__(tls=tls)
        self.interval = interval
        self.body = body
        self.head_at_once = head_at_once

    def serve(self, channel: _Channel) -> None:
        channel.handshake()
        while (request := channel.read_request()) is not None:
            default = SENDERS_BODY if request.method == "GET" else SEND_BODY
            head, body = http_response(self.body or default)
            if self.head_at_once:
                channel.send(head)
                head = b""
            for byte in head + body:
                if self.stopped.wait(self.interval):
                    return
                channel.send(bytes([byte]))  # raises once the client has gone


class TlsServer(LoopbackServer):
    """A TLS server that breaks the protocol (self-signed certificate at ``cert_path``).

    :param mode: ``"garbage_after_request"``: complete the handshake, read and record the HTTP
        request, then write plaintext (non-TLS) bytes on the raw socket and close.
        ``"bad_handshake"``: read the ClientHello, answer non-TLS bytes instead of a ServerHello
        and close (no HTTP byte is ever written by the client).
    """

    MODES = ("garbage_after_request", "bad_handshake")
    GARBAGE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}"

    def __init__(self, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        super().__init__(tls=True)
        self.mode = mode

    def serve(self, channel: _Channel) -> None:
        if self.mode == "bad_handshake":
            if not channel.recv_raw():
                return
        else:
            channel.handshake()
            if channel.read_request() is None:
                return
        channel.sock.sendall(self.GARBAGE)
        channel.close_after_client()


class KeepAliveServer(LoopbackServer):
    """Answers every request ``200 OK`` with the one-sender listing and keeps the connection open.

    :param delays: seconds to wait before each answer, in order (then none): holds a request
        in flight while a test does something else.
    """

    def __init__(self, delays: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.delays = list(delays)

    def serve(self, channel: _Channel) -> None:
        while channel.read_request() is not None:
            with self.lock:
                delay = self.delays.pop(0) if self.delays else 0.0
            if self.stopped.wait(delay):
                return
            channel.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(SENDERS_BODY)}\r\n\r\n".encode()
                + SENDERS_BODY
            )


class RedirectServer(LoopbackServer):
    """Reads each request, records it and answers ``303 See Other`` (the server may have processed
    a POST before redirecting it: what a send must then report)."""

    ANSWER = (
        b"HTTP/1.1 303 See Other\r\nLocation: /api/elsewhere\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n"
    )

    def serve(self, channel: _Channel) -> None:
        channel.handshake()
        if channel.read_request() is not None:
            channel.send(self.ANSWER)
            channel.close_after_client()


class ConnectProxy(LoopbackServer):
    """An HTTP proxy that tunnels ``CONNECT`` to one loopback port, whatever host the client names
    (so the client can address the API by a name it never resolves, e.g. ``api.famulor.test``).

    Records every request line it got (``lines``: ``"CONNECT api.famulor.test:443"``, or the
    line of a plain-http request, which it answers 502).

    :param target_port: the loopback port every tunnel leads to.
    :param mode: ``"normal"``: tunnel; ``"refuse"``: answer the CONNECT ``403 Forbidden``;
        ``"drop"``: read the CONNECT and close without an answer.
    """

    MODES = ("normal", "refuse", "drop")

    def __init__(self, target_port: int, mode: str = "normal") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        super().__init__()
        self.target_port = target_port
        self.mode = mode
        self.lines: list[str] = []

    @property
    def proxy_url(self) -> str:
        """The value for ``HTTPS_PROXY`` / ``HTTP_PROXY``."""
        return f"http://127.0.0.1:{self.port}"

    def serve(self, channel: _Channel) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = channel.recv_raw()
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1").rsplit(" ", 1)[0]
        with self.lock:
            self.lines.append(line)
        closing = b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        if not line.startswith("CONNECT "):
            channel.sock.sendall(b"HTTP/1.1 502 Bad Gateway" + closing)
        elif self.mode == "refuse":
            channel.sock.sendall(b"HTTP/1.1 403 Forbidden" + closing)
        elif self.mode == "normal":
            with socket.create_connection(("127.0.0.1", self.target_port), timeout=JOIN_TIMEOUT) as upstream:
                channel.sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._relay(channel.sock, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes or the proxy stops."""
        upstream.settimeout(POLL)
        peer = {client: upstream, upstream: client}
        while not self.stopped.is_set():
            readable, _, _ = select.select(list(peer), [], [], POLL)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                peer[sock].sendall(data)


def closed_port() -> socket.socket:
    """A loopback socket bound to a port where nothing listens (connecting is refused). The port
    is not reused while the caller holds the socket: close it after the test."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def refused_url() -> tuple[str, socket.socket]:
    """A loopback URL where nothing listens, and its :func:`closed_port` socket (close it after)."""
    sock = closed_port()
    return f"http://127.0.0.1:{sock.getsockname()[1]}/api", sock


def call_within(limit: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` in a daemon thread; its result or exception. Fail the test (instead of hanging
    the suite) if it is still running after ``limit`` seconds."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True, name="call_within")
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} still running after {limit} s: it hangs")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_within(limit: float, awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` on a new event loop; fail the test if it is not done after ``limit`` s."""

    async def bounded() -> T:
        task = asyncio.ensure_future(awaitable)
        if not (await asyncio.wait({task}, timeout=limit))[0]:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            name = getattr(awaitable, "__name__", awaitable)
            pytest.fail(f"{name} still running after {limit} s: it hangs")
        return task.result()

    return asyncio.run(bounded())


def famulor_connection(url: str, *, timeout: float, max_retries: int, verify_ssl: bool = False) -> dict:
    """The fields of a Famulor connection to ``url`` (for the ``airflow_conn`` fixture)."""
    extra = {"timeout": timeout, "max_retries": max_retries, "verify_ssl": verify_ssl}
    return {"conn_type": "famulor", "host": url, "password": "test-key", "extra": extra}


def call_hook(hook: Any, name: str, asynchronous: bool, *args: Any) -> Any:
    """Call the hook method ``name`` (or its ``a``-prefixed async twin), bounded by ``GUARD``."""
    if asynchronous:
        return run_within(GUARD, getattr(hook, f"a{name}")(*args))
    return call_within(GUARD, getattr(hook, name), *args)
