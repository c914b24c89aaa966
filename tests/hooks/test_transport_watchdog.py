"""The sync deadline's watchdog: one thread per process, never a connection it no longer holds.

Real sockets on loopback. The watchdog (``famulor_provider.transport.WATCHDOG``) is one daemon
thread with a heap of deadlines; an attempt holds its connection only until the pool takes it
back, so a deadline that fires late never cuts the request of the attempt that reused it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from loopback_servers import DEADLINE, GUARD, SEND_ARGS, DripServer, KeepAliveServer, call_within

from famulor_provider.exceptions import FamulorConnectionError, FamulorDeliveryUnknownError
from famulor_provider.hooks.famulor import FamulorHook
from famulor_provider.transport import Attempt, Watchdog, sync_attempt

pytestmark = pytest.mark.usefixtures("no_waits")


def test_no_thread_is_started_per_request(
    hook_for: Callable[..., FamulorHook], monkeypatch: pytest.MonkeyPatch
) -> None:
    with KeepAliveServer() as server:
        hook = hook_for(server.url)
        hook.list_whatsapp_senders()  # the watchdog may start here, once per process
        started: list[str] = []
        real_start = threading.Thread.start

        def counting_start(thread: threading.Thread) -> None:
            started.append(thread.name)
            real_start(thread)

        monkeypatch.setattr(threading.Thread, "start", counting_start)
        for _ in range(20):
            assert [s.id for s in hook.list_whatsapp_senders()] == [12]

        assert started == []
        assert server.connections == 1  # kept alive
        assert [t.name for t in threading.enumerate()].count("famulor-watchdog") == 1


def test_a_deadline_firing_late_never_cuts_the_connection_another_attempt_reuses(
    hook_for: Callable[..., FamulorHook],
) -> None:
    # Attempt A has read its answer: its connection is back in the pool, A has not finished yet.
    # Attempt B (another campaign thread) takes that connection and sends. Then A's deadline
    # fires. It must not cut B's send (B would be "delivery unknown" for nothing).
    with KeepAliveServer(delays=(0.0, 1.0)) as server:
        session = hook_for(server.url).session
        url = f"{server.url}/user/whatsapp/senders"
        outcome: dict[str, Any] = {}

        def attempt_b() -> None:
            with sync_attempt(30.0):
                try:
                    outcome["status"] = session.get(url, timeout=GUARD).status_code
                except Exception as err:
                    outcome["error"] = err

        with sync_attempt(30.0) as attempt_a:
            assert session.get(url, timeout=GUARD).status_code == 200
            second = threading.Thread(target=attempt_b)
            second.start()
            until = time.monotonic() + GUARD
            while len(server.requests) < 2 and time.monotonic() < until:  # B's request is in
                time.sleep(0.01)
            attempt_a.expire()  # what the watchdog does when A's deadline passes
            second.join(GUARD)

        assert outcome == {"status": 200}
        assert server.connections == 1  # B reused A's connection, and it was not cut


def test_the_earliest_deadline_wakes_the_watchdog() -> None:
    # A later deadline is in the heap; an earlier one added after it still fires on time.
    watchdog = Watchdog()
    late, early = Attempt(30.0), Attempt(0.2)
    left, right = socket.socketpair()
    with left, right:
        watchdog.add(late)
        watchdog.add(early)
        early.watch(None, left)
        started = time.monotonic()
        left.settimeout(GUARD)

        assert left.recv(1) == b""  # cut by the watchdog, not answered

        assert 0.15 <= time.monotonic() - started < 2.0
        assert early.expired
        assert not late.expired
        late.finish()


def test_finished_attempts_are_dropped_from_the_heap() -> None:
    watchdog = Watchdog()
    for _ in range(3 * Watchdog.COMPACT_AT):
        attempt = Attempt(30.0)
        watchdog.add(attempt)
        attempt.finish()
    assert watchdog.pending() <= Watchdog.COMPACT_AT + 1


def test_a_forked_child_gets_its_own_watchdog() -> None:
    with sync_attempt(30.0):  # the parent's watchdog thread runs
        pass
    assert "famulor-watchdog" in [t.name for t in threading.enumerate()]
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread does not exist here
        code = 1
        try:
            signal.alarm(int(GUARD))
            left, _right = socket.socketpair()
            with sync_attempt(0.2) as attempt:
                attempt.watch(None, left)
                code = 0 if left.recv(1) == b"" and attempt.expired else 2
        finally:
            os._exit(code)
    until = time.monotonic() + GUARD
    while time.monotonic() < until:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's deadline never fired")
    assert os.waitstatus_to_exitcode(status) == 0


# -- name resolution ---------------------------------------------------------------------------

LOOKUP = DEADLINE + 2.0  # a name lookup that outlasts the deadline


@pytest.fixture
def slow_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving ``localhost`` takes ``LOOKUP`` seconds (a slow or unreachable name server)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("localhost", b"localhost"):  # httpx passes bytes
            time.sleep(LOOKUP)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.usefixtures("slow_localhost")
def test_sync_a_name_lookup_past_the_deadline_ends_the_attempt_when_it_returns_unsent(
    hook_for: Callable[..., FamulorHook],
) -> None:
    # The stated limit: the sync path cannot interrupt the system resolver; the attempt ends as
    # soon as the lookup returns, before a byte is written: nothing was sent (a send is retried).
    with DripServer(interval=0.0) as server:
        hook = hook_for(server.url.replace("127.0.0.1", "localhost"))
        started = time.monotonic()

        with pytest.raises(FamulorConnectionError) as caught:
            call_within(GUARD, hook.send_whatsapp_template, *SEND_ARGS)

        assert LOOKUP <= time.monotonic() - started < LOOKUP + 1.5
        assert not isinstance(caught.value, FamulorDeliveryUnknownError)
        assert caught.value.request_sent is False
        assert "deadline passed before anything was sent" in str(caught.value)
        assert server.requests == []


@pytest.mark.usefixtures("slow_localhost")
def test_async_a_name_lookup_is_inside_the_deadline(hook_for: Callable[..., FamulorHook]) -> None:
    with DripServer(interval=0.0) as server:
        hook = hook_for(server.url.replace("127.0.0.1", "localhost"))

        async def timed() -> tuple[float, BaseException]:
            started = time.monotonic()
            try:
                await hook.asend_whatsapp_template(*SEND_ARGS)
            except FamulorConnectionError as err:
                return time.monotonic() - started, err
            raise AssertionError("the send did not fail")

        elapsed, error = asyncio.run(asyncio.wait_for(timed(), GUARD))

        assert DEADLINE * 0.75 <= elapsed < DEADLINE + 1.0
        assert not isinstance(error, FamulorDeliveryUnknownError)
        assert getattr(error, "request_sent", None) is False
        assert server.connections == 0
