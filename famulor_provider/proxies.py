"""Which proxy a request takes: one rule for the sync (``requests``) and async (``httpx``) paths.

The environment names the proxies, as ``requests`` and ``httpx`` read it: ``HTTPS_PROXY`` for
``https://`` URLs, ``HTTP_PROXY`` for ``http://``, ``ALL_PROXY`` for both (lower case wins, as
in ``urllib``); ``NO_PROXY`` lists what goes direct (:func:`bypass_proxy`). A loopback URL always
goes direct (the sandbox over plain http: the key would reach the proxy in clear text).
"""

from __future__ import annotations

import functools
import ipaddress
import os
from urllib.parse import urlsplit

from famulor_provider.connection import is_loopback

DEFAULT_PORTS = {"http": 80, "https": 443}


def bypass_proxy(url: str, no_proxy: str | None) -> bool:
    """Whether ``no_proxy`` (``NO_PROXY``'s value) sends ``url`` direct.

    Entries are separated by commas, spaces and case ignored:

    - ``*``: every URL;
    - an address or a range (``10.1.2.3``, ``10.0.0.0/8``, ``fd00::/8``): URLs whose host is
      an address in it (a name is never looked up);
    - a name, ``example.com``, ``.example.com`` or ``*.example.com``: that name and every name
      under it (``api.example.com``; not ``notexample.com``);
    - any of these with ``:port`` (``[fd00::1]:8443`` for an IPv6 address): only URLs on that
      port, the scheme's default port (443, 80) when the URL names none.

    :param url: the request's URL.
    :param no_proxy: the comma-separated list, or ``None``.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    address = _address(host)
    for entry in (e.strip().lower() for e in (no_proxy or "").split(",")):
        if entry == "*":
            return True
        if not entry:
            continue
        name, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        network = _network(name)
        if network is not None:
            if address is not None and address in network:
                return True
            continue
        name = name.removeprefix("*").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_for(url: str) -> str | None:
    """The proxy ``url`` goes through, from the environment; ``None``: direct.

    :param url: the request's URL.
    """
    parts = urlsplit(url)
    environment = tuple(os.environ.get(name) for name in _VARIABLES)
    return _proxy_for(parts.scheme.lower(), parts.netloc, environment)


@functools.lru_cache(maxsize=64)  # once per host and environment, not per request
def _proxy_for(scheme: str, netloc: str, environment: tuple[str | None, ...]) -> str | None:
    url = f"{scheme}://{netloc}/"
    if is_loopback(urlsplit(url).hostname or ""):
        return None
    proxies = _proxies(dict(zip(_VARIABLES, environment, strict=True)))
    if bypass_proxy(url, proxies.get("no")):
        return None
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"  # "proxy:3128" means plain http


_SCHEMES = ("http", "https", "all", "no")
_VARIABLES = (*(f"{s}_proxy" for s in _SCHEMES), *(f"{s.upper()}_PROXY" for s in _SCHEMES), "REQUEST_METHOD")


def _proxies(environ: dict[str, str | None]) -> dict[str, str]:
    """``urllib.request.getproxies`` on Linux: a lower-case variable wins, even empty."""
    found: dict[str, str] = {}
    for scheme in _SCHEMES:
        lower, upper = environ[f"{scheme}_proxy"], environ[f"{scheme.upper()}_PROXY"]
        value = lower if lower is not None else upper
        if value:
            found[scheme] = value
    if environ["REQUEST_METHOD"] is not None:  # a CGI script: HTTP_PROXY may come from a request header
        found.pop("http", None)
    return found


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        return None


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` -> (host, port); a bare IPv6 address or range keeps its colons."""
    if entry.startswith("["):  # [fd00::1]:8443
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return entry, None
