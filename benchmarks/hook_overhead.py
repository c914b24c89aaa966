"""What the hook adds to one GET: ``FamulorHook.request`` against a raw keep-alive ``requests`` GET.

Both call ``GET /user/whatsapp/senders?status=online`` on the same minimal keep-alive HTTP/1.1
server on 127.0.0.1, which runs in a separate process (its CPU is not counted in ours), over one
kept-alive connection each; both read the JSON. (The sandbox closes every connection: it would
time connecting, not the hook.) The raw baseline is a ``requests.Session`` with the same headers
and timeout that checks the status and parses the body: what a hand-written client does at the
least. The hook adds its deadline per attempt, the not-sent bookkeeping, the retry policy and its
error mapping.

Calls are interleaved (raw, hook, hook, raw, ...) so both see the same moments of machine load;
each round times ``--calls`` calls of each. The figures are the medians over ``--rounds`` rounds of the time
per call and their ratio hook / raw (and the median and quartiles of the per-round ratios): wall
time, what the goal is stated in, and the CPU time of this process (the client's work alone, the
watchdog thread included), which a busy machine disturbs far less.

A second part times the deadline bookkeeping alone: entering and leaving one sync attempt
(``transport.sync_attempt``) against starting and cancelling a ``threading.Timer`` (one OS thread
per attempt, the design it replaces).

Run: ``python benchmarks/hook_overhead.py [--rounds 21] [--calls 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

PATH = "/user/whatsapp/senders"
PARAMS = {"status": "online"}


BODY = json.dumps(
    {"data": [{"id": 12, "phone_number": "+4915112345678", "display_name": "Bench", "status": "online"}]}
).encode()


def serve(port_file: Path) -> None:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 answering every GET with one sender (run in its
    own process by :func:`server`)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        httpd.daemon_threads = True
        port_file.write_text(str(httpd.server_address[1]))
        httpd.serve_forever()


@contextmanager
def server() -> Iterator[str]:
    """:func:`serve` in its own process; yields its base URL; stopped by its PID."""
    with tempfile.TemporaryDirectory() as folder:
        port_file = Path(folder, "port")
        process = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{int(port_file.read_text())}/api"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def per_call_us(call: Callable[[], object], calls: int) -> float:
    """Wall time per call, in microseconds."""
    return timed(call, calls)[0]


def timed(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """Wall and CPU time (this process, all threads: the watchdog counts) per call, in us."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


def raw_client(base_url: str, headers: dict[str, str], timeout: tuple[float, float]) -> Callable[[], object]:
    session = requests.Session()
    session.headers.update(headers)
    url = base_url + PATH

    def call() -> object:
        response = session.get(url, params=PARAMS, timeout=timeout, allow_redirects=False)
        response.raise_for_status()
        return response.json()

    return call


def hook_client(base_url: str) -> tuple[Callable[[], object], dict[str, str], tuple[float, float]]:
    from famulor_provider.hooks.famulor import FamulorHook

    connection = {"conn_type": "famulor", "host": base_url, "password": "bench-key"}
    os.environ["AIRFLOW_CONN_FAMULOR_DEFAULT"] = json.dumps(connection)
    hook = FamulorHook()
    config = hook.config
    return (
        lambda: hook.request("GET", PATH, params=PARAMS),
        config.headers,
        (config.connect_timeout, config.deadline),
    )


def interleaved(clients: dict[str, Callable[[], object]], calls: int) -> dict[str, tuple[float, float]]:
    """One round: ``calls`` calls of each client, alternating call by call (and which goes first),
    so both see the same moments of machine load; wall and CPU time per call of each, in us."""
    names = list(clients)
    totals = {name: [0.0, 0.0] for name in names}
    for i in range(calls):
        for name in names if i % 2 == 0 else reversed(names):
            wall, cpu = time.perf_counter(), time.process_time()
            clients[name]()
            totals[name][0] += time.perf_counter() - wall
            totals[name][1] += time.process_time() - cpu
    return {name: (wall / calls * 1e6, cpu / calls * 1e6) for name, (wall, cpu) in totals.items()}


def quartiles(values: list[float]) -> str:
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.3f}-{high:.3f}"


def bookkeeping(samples: int) -> tuple[float, float]:
    """Microseconds per attempt: ``sync_attempt`` enter/exit, and a ``threading.Timer`` start/cancel."""
    from famulor_provider.transport import sync_attempt

    def attempt() -> None:
        with sync_attempt(30.0):
            pass

    def timer() -> None:
        t = threading.Timer(30.0, lambda: None)
        t.daemon = True
        t.start()
        t.cancel()

    return per_call_us(attempt, samples), per_call_us(timer, samples)


def async_client_ms(samples: int) -> tuple[float, float]:
    """Milliseconds to open and close an httpx client (the async hook opens one per request):
    with httpx's own TLS context (the CA bundle loaded each time), and with the hook's shared one."""
    import asyncio

    import httpx

    from famulor_provider.transport import httpx_verify

    async def open_close(verify: object) -> float:
        start = time.perf_counter()
        for _ in range(samples):
            async with httpx.AsyncClient(verify=verify):  # type: ignore[arg-type]
                pass
        return (time.perf_counter() - start) / samples * 1000

    async def both() -> tuple[float, float]:
        return await open_close(True), await open_close(httpx_verify(True))

    return asyncio.run(both())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=200, help="calls of each client per round")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    with server() as base_url:
        hook, headers, timeout = hook_client(base_url)
        raw = raw_client(base_url, headers, timeout)
        assert hook() == raw(), "both clients must read the same answer"
        per_call_us(hook, args.calls)  # warm up both connections and code paths
        per_call_us(raw, args.calls)
        times: dict[str, list[tuple[float, float]]] = {"raw": [], "hook": []}
        for _ in range(args.rounds):
            for name, result in interleaved({"raw": raw, "hook": hook}, args.calls).items():
                times[name].append(result)
    print(f"{args.rounds} rounds of {args.calls} interleaved GETs each, keep-alive server in its own process")
    for column, label in ((0, "wall"), (1, "CPU of this process")):
        raw_us = [t[column] for t in times["raw"]]
        hook_us = [t[column] for t in times["hook"]]
        ratios = [h / r for h, r in zip(hook_us, raw_us, strict=True)]
        raw_median, hook_median = statistics.median(raw_us), statistics.median(hook_us)
        print(f"{label}:")
        print(f"  raw keep-alive requests GET: {raw_median:7.1f} us per call (median of rounds)")
        print(f"  FamulorHook.request GET:     {hook_median:7.1f} us per call (median of rounds)")
        print(
            f"  ratio hook / raw: {hook_median / raw_median:.3f} (medians); per round: median "
            f"{statistics.median(ratios):.3f}, quartiles {quartiles(ratios)}"
        )
    attempt_us, timer_us = bookkeeping(20 * args.calls)
    print(
        f"deadline bookkeeping per attempt: sync_attempt {attempt_us:.1f} us, "
        f"threading.Timer start+cancel {timer_us:.1f} us"
    )
    own_ms, shared_ms = async_client_ms(20)
    print(
        f"async path, one httpx client per request: {own_ms:.2f} ms with a new TLS context, "
        f"{shared_ms:.2f} ms with the shared one ({own_ms / shared_ms:.0f}x)"
    )


if __name__ == "__main__":
    main()
