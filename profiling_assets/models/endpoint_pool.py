"""Several servers of one model as one backend.

A request goes to the endpoint with the fewest requests in flight from this process (ties in
turn, so a quiet pool still spreads its load). An endpoint that could not serve it (a
`transport` `ModelError`: refused connection, timeout, 5xx, a broken answer) is set aside for
`cooldown_s` and the same request goes to the next endpoint, each endpoint at most once per
request. So a server that dies costs the stage no attempt of its retry budget
(`PROFILING_LLM_MAX_RETRIES`) while another one answers; only when every endpoint failed does
the caller see a `ModelError`, and then its own retries and Dagster's step retries work as
they do with one server.

A request that finds every endpoint set aside still goes to the one whose cooldown ends
first rather than failing unasked: with one server every retry still reaches it, and with
several it is the best bet. A declined request
(`refused`) is the request's fault, not the server's: it is raised at once, nothing set aside.

Thread-safe: the LLM stage keeps `PROFILING_LLM_PARALLEL` requests in flight from its
threads; the lock covers only the bookkeeping, never a request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

from profiling_assets.models.base import ModelError
from profiling_assets.models.endpoints import shown

T = TypeVar("T")
DEFAULT_COOLDOWN_S = 30.0
_REASON_CHARS = 300  # of each endpoint's error in the combined message


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0
    aside_until: float = float("-inf")  # on the pool's clock
    last_error: str = ""


class EndpointPool:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        if len(set(endpoints)) != len(endpoints):
            raise ValueError(f"an endpoint is listed twice: {list(endpoints)}")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must not be negative, not {cooldown_s}")
        self.cooldown_s = cooldown_s
        self._endpoints = [_Endpoint(url) for url in endpoints]
        self._position = {url: i for i, url in enumerate(endpoints)}
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = 0  # index the next tie goes to

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(e.url for e in self._endpoints)

    def call(self, request: Callable[[str], T]) -> T:
        """`request(url)` on the least busy endpoint, then on the others in the same order of
        preference while endpoints fail; the result of the first that answers."""
        failures: dict[str, ModelError] = {}
        while True:
            endpoint = self._acquire(tried=failures.keys())
            if endpoint is None:
                last = next(reversed(failures.values()))
                if len(self._endpoints) == 1:
                    raise last  # what a single server has always raised, unchanged
                raise self._exhausted(failures) from last
            try:
                result = request(endpoint.url)
            except ModelError as error:
                if error.kind != "transport":
                    self._release(endpoint, None)
                    raise
                self._release(endpoint, str(error))
                failures[endpoint.url] = error
                continue
            except BaseException:
                # Not the server's doing (a bug, an interrupt): no verdict on the endpoint.
                self._release(endpoint, None)
                raise
            self._release(endpoint, None)
            return result

    def set_aside(self) -> dict[str, float]:
        """Endpoints set aside now → seconds until they are chosen again."""
        with self._lock:
            now = self._clock()
            return {e.url: e.aside_until - now for e in self._endpoints if e.aside_until > now}

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return {e.url: e.in_flight for e in self._endpoints}

    def _acquire(self, tried: Collection[str]) -> _Endpoint | None:
        with self._lock:
            now = self._clock()
            untried = [e for e in self._endpoints if e.url not in tried]
            ready = [e for e in untried if e.aside_until <= now]
            if ready:
                chosen = self._least_busy(ready)
            elif untried and len(untried) == len(self._endpoints):
                # Everything set aside before this request was tried anywhere.
                chosen = min(untried, key=lambda e: e.aside_until)
            else:
                return None
            chosen.in_flight += 1
            return chosen

    def _least_busy(self, ready: list[_Endpoint]) -> _Endpoint:
        """Fewest in flight; among equals the first at or after the turn, which then moves
        past it (round robin)."""
        fewest = min(e.in_flight for e in ready)
        count = len(self._endpoints)
        chosen = min(
            (e for e in ready if e.in_flight == fewest),
            key=lambda e: (self._position[e.url] - self._turn) % count,
        )
        self._turn = (self._position[chosen.url] + 1) % count
        return chosen

    def _release(self, endpoint: _Endpoint, error: str | None) -> None:
        with self._lock:
            endpoint.in_flight -= 1
            if error is not None:
                endpoint.aside_until = self._clock() + self.cooldown_s
                endpoint.last_error = error

    def _exhausted(self, failures: dict[str, ModelError]) -> ModelError:
        """No endpoint of several answered: each one with its reason, so the failure recorded
        for the user (and the step's, at an outage) says which servers to look at."""
        with self._lock:
            now = self._clock()
            lines = []
            for e in self._endpoints:
                if e.url in failures:
                    lines.append(f"{shown(e.url)}: {str(failures[e.url])[:_REASON_CHARS]}")
                else:
                    wait = max(0.0, e.aside_until - now)
                    reason = e.last_error[:_REASON_CHARS] or "no reason recorded"
                    lines.append(f"{shown(e.url)}: set aside for {wait:.0f} s more ({reason})")
        return ModelError(f"no endpoint of {len(self._endpoints)} answered — " + "; ".join(lines))
