"""One model identity for a pool of endpoints: every endpoint must serve the same model.

The identity feeds `code_version` and vector table names, so it must not depend on which
endpoint happens to answer first, nor on how many are listed: it is the answer of the first
endpoint (in the order configured) that reports the model, and two endpoints that report
different models are a configuration error, raised where the identity is computed (the
definitions load), not discovered later as profiles from two models under one name."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from profiling_assets.models.base import ModelError, ModelIdentity
from profiling_assets.models.endpoints import shown

T = TypeVar("T")


class AskedOnce(Generic[T]):
    """A value asked of the servers on first use only (not at construction, so building a
    backend never waits on a server), and once even when several threads want it at once."""

    def __init__(self, ask: Callable[[], T]) -> None:
        self._ask = ask
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._ask()
            return self._value


def ask_each(endpoints: Sequence[str], ask: Callable[[str], T]) -> list[T]:
    """`ask(url)` for every endpoint, all at once (a down endpoint costs its connect timeout
    once, not once per endpoint), answers in the configured order. One endpoint is asked in
    this thread, without a thread pool."""
    if len(endpoints) == 1:
        return [ask(endpoints[0])]
    with ThreadPoolExecutor(max_workers=len(endpoints)) as pool:
        return list(pool.map(ask, endpoints))


def agreed_identity(endpoints: Sequence[str], ask: Callable[[str], ModelIdentity]) -> ModelIdentity:
    """The identity the endpoints agree on. `ask` never raises: an endpoint that could not say
    returns an identity with a `note` (the backends' convention), and is left out of the
    comparison. When none could say, the first endpoint's answer, note and all (for a single
    server: its own answer)."""
    identities = ask_each(endpoints, ask)
    answered = [(url, i) for url, i in zip(endpoints, identities, strict=True) if not i.note]
    if len({str(i) for _, i in answered}) > 1:
        listed = "; ".join(f"{shown(url)} serves {i}" for url, i in answered)
        raise ModelError(
            f"the endpoints serve different models ({listed}): list only servers of one "
            "model in one setting"
        )
    return answered[0][1] if answered else identities[0]
