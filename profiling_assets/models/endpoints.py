"""A server setting that lists one or several endpoints: `http://a:8000/v1,http://b:8000/v1`.

Parsed and checked once, where the settings are read, so a typo fails at start naming the
entry instead of as a connection error in the middle of a run."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

SEPARATOR = ","
# For questions about a server (which models, which weights): asked while definitions load,
# so a server that is down must answer or fail in seconds.
METADATA_TIMEOUT = httpx.Timeout(5.0, connect=2.0)


def parse_endpoints(value: str, *, bare_host_ok: bool = False) -> list[str]:
    """The endpoints of a comma-separated setting, stripped, in the order given (the order a
    model identity is taken in). `bare_host_ok` accepts `host[:port]` without a scheme, as
    Ollama's own `OLLAMA_HOST` does; an OpenAI-compatible base URL needs its scheme.
    Raises `ValueError` naming the entry that is not a URL."""
    entries = [entry.strip() for entry in value.split(SEPARATOR)]
    many = len(entries) > 1
    endpoints: list[str] = []
    for number, entry in enumerate(entries, start=1):
        where = f"entry {number} of {len(entries)} " if many else ""
        problem = _url_problem(entry, bare_host_ok)
        if problem:
            raise ValueError(f"{where}{shown(entry)!r} is not a server URL: {problem}")
        if entry in endpoints:
            # Listed twice, one server would get twice the share and be set aside twice over.
            raise ValueError(f"{where}{shown(entry)!r} is listed twice")
        endpoints.append(entry)
    return endpoints


def join_endpoints(endpoints: list[str]) -> str:
    """The setting's normal form: one URL stays exactly that URL."""
    return SEPARATOR.join(endpoints)


def shown(url: str) -> str:
    """An endpoint as messages show it: a password in the URL (`http://user:pw@host`, a proxy's
    basic auth) must not reach logs, failure rows or the UI."""
    front, rest = url.split("://", 1) if "://" in url else ("", url)
    host, slash, path = rest.partition("/")
    if "@" not in host:
        return url
    scheme = f"{front}://" if front else ""
    return f"{scheme}***@{host.rsplit('@', 1)[1]}{slash}{path}"


def _url_problem(entry: str, bare_host_ok: bool) -> str:
    if not entry:
        return "empty (a stray comma?)"
    if any(ch.isspace() for ch in entry):
        return "it contains a space"
    if "://" not in entry:
        if not bare_host_ok:
            return "it needs http:// or https:// in front"
        entry = f"http://{entry}"  # how Ollama reads a bare host
    parts = urlsplit(entry)
    if parts.scheme not in {"http", "https"}:
        return f"scheme {parts.scheme!r} is not http or https"
    if not parts.hostname:
        return "it names no host"
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError as error:
        return str(error)
    if parts.query or parts.fragment:
        return "a server URL has no ?query or #fragment"
    return ""
