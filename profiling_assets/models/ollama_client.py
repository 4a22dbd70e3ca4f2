"""What the Ollama backends (profile LLM, embedder) share: model tags, and one client per
server behind an `EndpointPool`."""

from __future__ import annotations

import httpx
import ollama

from profiling_assets.models.endpoint_pool import EndpointPool
from profiling_assets.models.endpoints import parse_endpoints


def full_tag(name: str) -> str:
    """Ollama's canonical name: `bge-m3` is `bge-m3:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def pooled_clients(
    host: str, *, timeout_s: float, connect_timeout_s: float, cooldown_s: float
) -> tuple[dict[str, ollama.Client], EndpointPool]:
    """One client per server `host` lists (bare `host:port` allowed, as in `OLLAMA_HOST`),
    and the pool that sends each request to the least busy one and sets aside one that
    fails. The connect timeout is separate and short: a wrong host should fail in seconds,
    not after `timeout_s`."""
    timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
    hosts = parse_endpoints(host, bare_host_ok=True)
    clients = {one: ollama.Client(host=one, timeout=timeout) for one in hosts}
    return clients, EndpointPool(hosts, cooldown_s=cooldown_s)
