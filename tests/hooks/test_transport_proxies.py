"""FamulorHook behind an HTTP proxy from the environment, over real loopback sockets.

A real ``CONNECT`` proxy on loopback tunnels to a loopback TLS server; the client addresses the
API as ``https://api.famulor.test/api``, a name it never resolves (only the proxy "knows" it), so
a request that bypassed the proxy would fail to resolve instead of passing unnoticed. Sync
(``requests``) and async (``httpx``): the per-attempt deadline holds through the tunnel; a proxy
that refuses the CONNECT, drops it or cannot be reached has sent nothing (a send is retried); a
failure after the tunnel carried the request is delivery unknown; a loopback base URL never
goes through a proxy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from loopback_servers import (
    DEADLINE,
    SEND_ARGS,
    ConnectProxy,
    DripServer,
    TlsServer,
    both_paths,
    call_hook,
    closed_port,
)

from famulor_provider import proxies
from famulor_provider.exceptions import (
    FamulorConnectionError,
    FamulorDeliveryUnknownError,
    FamulorTimeoutError,
)
from famulor_provider.hooks.famulor import FamulorHook
from famulor_provider.proxies import bypass_proxy, proxy_for

pytestmark = [
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
    pytest.mark.usefixtures("no_waits"),
]

API_HOST = "api.famulor.test"  # resolvable by nobody: only the proxy maps it (to the TLS server)
API_URL = f"https://{API_HOST}/api"
SLACK = 4.0  # loose upper bound on top of the deadlines
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """``proxy_env(HTTPS_PROXY=..., ...)``: exactly these proxy variables, in both cases."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    def set_env(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
            monkeypatch.setenv(name.lower(), value)

    yield set_env


def retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    """How many retries the hook logged (one WARNING each)."""
    return sum("; retry " in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@both_paths
def test_a_read_goes_through_the_proxy(
    hook_for: Callable[..., FamulorHook], proxy_env: Callable[..., None], asynchronous: bool
) -> None:
    with DripServer(interval=0.0, tls=True) as server, ConnectProxy(server.port) as proxy:
        proxy_env(HTTPS_PROXY=proxy.proxy_url)
        hook = hook_for(API_URL)

        senders = call_hook(hook, "list_whatsapp_senders", asynchronous)

        assert [s.id for s in senders] == [12]
        assert proxy.lines == [f"CONNECT {API_HOST}:443"]
        assert server.methods() == ["GET"]
        assert server.requests[0].path == "/api/user/whatsapp/senders?status=online"


@both_paths
def test_no_proxy_is_honoured(
    hook_for: Callable[..., FamulorHook], proxy_env: Callable[..., None], asynchronous: bool
) -> None:
    with DripServer(interval=0.0, tls=True) as server, ConnectProxy(server.port) as proxy:
        proxy_env(HTTPS_PROXY=proxy.proxy_url, NO_PROXY=f"example.org,{API_HOST}")
        hook = hook_for(API_URL)

        with pytest.raises(FamulorConnectionError) as caught:  # direct: the name does not resolve
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

        assert caught.value.request_sent is False
        assert proxy.lines == []


@both_paths
def test_the_deadline_cuts_a_dripping_answer_through_the_proxy(
    hook_for: Callable[..., FamulorHook], proxy_env: Callable[..., None], asynchronous: bool
) -> None:
    with DripServer(interval=1.0, tls=True) as server, ConnectProxy(server.port) as proxy:
        proxy_env(HTTPS_PROXY=proxy.proxy_url)
        hook = hook_for(API_URL, max_retries=1)
        started = time.monotonic()

        with pytest.raises(FamulorTimeoutError) as caught:
            call_hook(hook, "list_whatsapp_senders", asynchronous)

        elapsed = time.monotonic() - started
        assert 2 * DEADLINE * 0.75 <= elapsed < 2 * DEADLINE + SLACK
        assert caught.value.request_sent is True
        assert server.methods() == ["GET", "GET"]
        assert proxy.lines == [f"CONNECT {API_HOST}:443"] * 2


@both_paths
def test_a_dripping_send_through_the_proxy_is_delivery_unknown(
    hook_for: Callable[..., FamulorHook], proxy_env: Callable[..., None], asynchronous: bool
) -> None:
    with DripServer(interval=1.0, tls=True) as server, ConnectProxy(server.port) as proxy:
        proxy_env(HTTPS_PROXY=proxy.proxy_url)
        hook = hook_for(API_URL, max_retries=3)
        started = time.monotonic()

        with pytest.raises(FamulorDeliveryUnknownError):
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

        assert time.monotonic() - started < DEADLINE + SLACK
        assert server.methods() == ["POST"]


@both_paths
@pytest.mark.parametrize("mode", ["refuse", "drop"])
def test_a_proxy_refusing_the_tunnel_sent_nothing_and_a_send_is_retried(
    hook_for: Callable[..., FamulorHook],
    proxy_env: Callable[..., None],
    asynchronous: bool,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with DripServer(interval=0.0, tls=True) as server, ConnectProxy(server.port, mode) as proxy:
        proxy_env(HTTPS_PROXY=proxy.proxy_url)
        hook = hook_for(API_URL, max_retries=2)

        with caplog.at_level(logging.WARNING), pytest.raises(FamulorConnectionError) as caught:
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

        assert not isinstance(caught.value, FamulorDeliveryUnknownError)
        assert caught.value.request_sent is False
        assert proxy.lines == [f"CONNECT {API_HOST}:443"] * 3  # retried: nothing can have been sent
        assert retries_logged(caplog) == 2
        assert server.connections == 0


@both_paths
def test_an_unreachable_proxy_sent_nothing_and_a_send_is_retried(
    hook_for: Callable[..., FamulorHook],
    proxy_env: Callable[..., None],
    asynchronous: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with closed_port() as nothing_listens:
        proxy_env(HTTPS_PROXY=f"http://127.0.0.1:{nothing_listens.getsockname()[1]}")
        hook = hook_for(API_URL, max_retries=2)

        with caplog.at_level(logging.WARNING), pytest.raises(FamulorConnectionError) as caught:
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

    assert not isinstance(caught.value, FamulorDeliveryUnknownError)
    assert caught.value.request_sent is False
    assert "could not connect (nothing was sent)" in str(caught.value)
    assert retries_logged(caplog) == 2


@both_paths
def test_a_break_after_the_tunnel_carried_the_send_is_delivery_unknown(
    hook_for: Callable[..., FamulorHook], proxy_env: Callable[..., None], asynchronous: bool
) -> None:
    with TlsServer("garbage_after_request") as server, ConnectProxy(server.port) as proxy:
        proxy_env(HTTPS_PROXY=proxy.proxy_url)
        hook = hook_for(API_URL, max_retries=3)

        with pytest.raises(FamulorDeliveryUnknownError) as caught:
            call_hook(hook, "send_whatsapp_template", asynchronous, *SEND_ARGS)

        assert caught.value.__cause__.request_sent is True  # type: ignore[union-attr]
        assert server.methods() == ["POST"]  # one billed POST, not max_retries + 1
        assert proxy.lines == [f"CONNECT {API_HOST}:443"]


@both_paths
@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
def test_a_loopback_base_url_never_goes_through_a_proxy(
    hook_for: Callable[..., FamulorHook], proxy_env: Callable[..., None], asynchronous: bool, variable: str
) -> None:
    # The sandbox over plain http: through a proxy the key would travel in clear text.
    with DripServer(interval=0.0) as server, ConnectProxy(server.port) as proxy:
        proxy_env(**{variable: proxy.proxy_url})
        hook = hook_for(server.url)

        senders = call_hook(hook, "list_whatsapp_senders", asynchronous)

        assert [s.id for s in senders] == [12]
        assert server.methods() == ["GET"]
        assert proxy.lines == []
        assert proxy.connections == 0


# -- NO_PROXY: one rule for both paths (famulor_provider.proxies) -----------------------------------


@pytest.mark.parametrize(
    ("url", "no_proxy", "direct"),
    [
        ("https://10.1.2.3/api", "10.0.0.0/8", True),  # decided only: nothing connects to 10.x
        ("https://10.1.2.3:8443/api", "example.org, 10.0.0.0/8", True),
        ("https://11.1.2.3/api", "10.0.0.0/8", False),
        ("https://10.1.2.3/api", "10.1.2.3", True),
        ("https://[fd00::1]/api", "fd00::/8", True),
        ("https://api.famulor.test/api", "10.0.0.0/8", False),  # a name is never looked up
        ("https://api.famulor.test/api", "api.famulor.test", True),
        ("https://api.famulor.test/api", "famulor.test", True),  # the names under it
        ("https://api.famulor.test/api", ".famulor.test", True),
        ("https://famulor.test/api", ".famulor.test", True),  # and the name itself
        ("https://api.famulor.test/api", "*.famulor.test", True),
        ("https://api.notfamulor.test/api", "famulor.test", False),
        ("https://API.Famulor.Test/api", "api.famulor.TEST", True),
        ("https://api.famulor.test/api", "*", True),
        ("https://api.famulor.test/api", "api.famulor.test:443", True),  # the scheme's default port
        ("https://api.famulor.test:8443/api", "api.famulor.test:8443", True),
        ("https://api.famulor.test/api", "api.famulor.test:8443", False),
        ("http://api.famulor.test/api", "api.famulor.test:80", True),
        ("https://10.1.2.3:8443/api", "10.0.0.0/8:443", False),
        ("https://[fd00::1]:8443/api", "[fd00::1]:8443", True),
        ("https://api.famulor.test/api", "", False),
        ("https://api.famulor.test/api", " , ,", False),
    ],
)
def test_which_urls_no_proxy_sends_direct(url: str, no_proxy: str, direct: bool) -> None:
    assert bypass_proxy(url, no_proxy) is direct


def test_the_proxy_of_a_url_comes_from_the_environment(proxy_env: Callable[..., None]) -> None:
    proxy_env(HTTPS_PROXY="proxy.corp:3128", HTTP_PROXY="http://plain.corp:8080", NO_PROXY="10.0.0.0/8")
    assert proxy_for("https://api.famulor.ai/api") == "http://proxy.corp:3128"
    assert proxy_for("http://api.famulor.ai/api") == "http://plain.corp:8080"
    assert proxy_for("https://10.9.8.7/api") is None
    assert proxy_for("http://127.0.0.1:8000/api") is None  # loopback: always direct


SPELLINGS = ["api.famulor.test", "famulor.test", ".famulor.test", "*", "api.famulor.test:443"]


@both_paths
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_each_no_proxy_spelling_is_honoured(
    hook_for: Callable[..., FamulorHook], proxy_env: Callable[..., None], asynchronous: bool, spelling: str
) -> None:
    with DripServer(interval=0.0, tls=True) as server, ConnectProxy(server.port) as proxy:
        proxy_env(HTTPS_PROXY=proxy.proxy_url, NO_PROXY=f"example.org,{spelling}")
        hook = hook_for(API_URL)

        with pytest.raises(FamulorConnectionError) as caught:  # direct: the name does not resolve
            call_hook(hook, "list_whatsapp_senders", asynchronous)

        assert caught.value.request_sent is False
        assert proxy.lines == []


@both_paths
@pytest.mark.parametrize("spelling", ["api.famulor.test:8443", "notfamulor.test", "10.0.0.0/8"])
def test_a_no_proxy_entry_for_another_host_or_port_keeps_the_proxy(
    hook_for: Callable[..., FamulorHook], proxy_env: Callable[..., None], asynchronous: bool, spelling: str
) -> None:
    with DripServer(interval=0.0, tls=True) as server, ConnectProxy(server.port) as proxy:
        proxy_env(HTTPS_PROXY=proxy.proxy_url, NO_PROXY=spelling)
        hook = hook_for(API_URL)

        assert [s.id for s in call_hook(hook, "list_whatsapp_senders", asynchronous)] == [12]
        assert proxy.lines == [f"CONNECT {API_HOST}:443"]


@pytest.fixture
def loopback_not_exempt(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let NO_PROXY alone decide for 127.0.0.x (a loopback URL otherwise never uses a proxy), so
    an address range can be tested with traffic on loopback only."""
    monkeypatch.setattr(proxies, "is_loopback", lambda host: False)
    proxies._proxy_for.cache_clear()
    yield
    proxies._proxy_for.cache_clear()


@both_paths
@pytest.mark.usefixtures("loopback_not_exempt")
@pytest.mark.parametrize(("no_proxy", "through_proxy"), [("127.0.0.0/8", False), ("10.0.0.0/8", True)])
def test_an_address_range_in_no_proxy_is_honoured(
    hook_for: Callable[..., FamulorHook],
    proxy_env: Callable[..., None],
    asynchronous: bool,
    no_proxy: str,
    through_proxy: bool,
) -> None:
    with DripServer(interval=0.0, tls=True) as server, ConnectProxy(server.port) as proxy:
        proxy_env(HTTPS_PROXY=proxy.proxy_url, NO_PROXY=no_proxy)
        hook = hook_for(server.url)  # https://127.0.0.1:<port>/api

        assert [s.id for s in call_hook(hook, "list_whatsapp_senders", asynchronous)] == [12]

        assert server.methods() == ["GET"]
        assert proxy.lines == ([f"CONNECT 127.0.0.1:{server.port}"] if through_proxy else [])
