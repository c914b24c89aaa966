"""
A real S3 endpoint on 127.0.0.1 for the campaign ledger's tests: moto's server, and a proxy.

``S3Server``: moto's ``ThreadedMotoServer`` on an ephemeral port (``If-None-Match`` and
``If-Match`` on ``PutObject`` honoured, IAM simulated on demand), reset and stopped on exit.
``S3Proxy``: an HTTP proxy in front of it that adds a delay to every request, counts requests by
operation and can drop the ``If-None-Match`` header (a store that ignores conditional writes).
``aws_conn_env``: the ``AIRFLOW_CONN_<ID>`` variable of an AWS connection to either.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY = "testing-key-id", "testing-secret"


def aws_conn_env(
    endpoint_url: str, conn_id: str = "aws_default", key: str = ACCESS_KEY, secret: str = SECRET_KEY
) -> dict[str, str]:
    """The environment variable that defines an Airflow AWS connection to ``endpoint_url``."""
    conn = {
        "conn_type": "aws",
        "login": key,
        "password": secret,
        "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}


class S3Server:
    """moto's S3 (and IAM) server on 127.0.0.1, in this process; ``with S3Server() as s3: ...``."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def __enter__(self) -> S3Server:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.reset()
        finally:
            self._server.stop()

    def reset(self) -> None:
        """Forget every bucket and user: moto keeps them per process, not per server."""
        import urllib.request

        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10
        )

    def client(self, service: str = "s3", key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def user_with(self, name: str, actions: list[str]) -> tuple[str, str]:
        """An IAM user allowed only ``actions`` on every resource: its access key and secret."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @contextlib.contextmanager
    def iam_enforced(self) -> Iterator[None]:
        """Check every request's signature and IAM policy (moto skips both by default)."""
        from moto.core.authorization import enable_iam_authentication

        with enable_iam_authentication():
            yield


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _forward(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
        if proxy.strip_if_none_match:
            headers = {k: v for k, v in headers.items() if k.lower() != "if-none-match"}
        query = self.path.partition("?")[2]
        kind = {"GET": "LIST" if "list-type" in query else "GET"}.get(self.command, self.command)
        with proxy.lock:
            proxy.requests[kind] += 1
        if proxy.delay:
            time.sleep(proxy.delay)
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: S3Proxy


class S3Proxy:
    """A proxy on 127.0.0.1 in front of ``upstream_url``: ``delay`` seconds added to every request,
    ``requests`` counted by kind (``PUT``, ``GET``, ``LIST``, ...), ``If-None-Match`` dropped with
    ``strip_if_none_match``."""

    def __init__(self, upstream_url: str, *, delay: float = 0.0, strip_if_none_match: bool = False) -> None:
        host, _, port = upstream_url.removeprefix("http://").partition(":")
        self.upstream_host, self.upstream_port = host, int(port)
        self.delay = delay
        self.strip_if_none_match = strip_if_none_match
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-proxy", daemon=True)

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
