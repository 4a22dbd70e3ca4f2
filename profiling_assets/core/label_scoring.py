"""Label candidates for a user: which labels of the business spec their chunks talk about.

Hybrid: a label the customer names literally (its name or an alias, in what the user said or
browsed) is found by keyword, whatever a small embedder makes of it; every other label by
the embedder score below. A keyword hit adds `KEYWORD_BOOST` to the label's score and cites
the chunk where it was said.

Each label's text is embedded once as a query (`LabelIndex`); a user's chunk vectors, already
computed for retrieval, are scored against the whole label matrix in one matrix product.
A label's score is its best cosine over the user's chunks and the citation is that chunk.

Calibration: embedders such as e5 put every Chinese sentence pair at cosine ~0.8–0.9, and a
label with a generic description sits higher than a specific one on *every* chunk. Raw
cosines are therefore not comparable across labels. When the index is given background
vectors (in the pipeline: the fixed neutral `BACKGROUND_PASSAGES`, not the cohort's chunks),
each label's mean cosine over that background is subtracted, so a score says "how much more
this user talks about the label than an ordinary chunk does": ~0 is ordinary, clearly
positive is a match, and one `min_score` threshold works for every label. Without a
background the baseline is 0 and scores are raw cosines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from profiling_assets.core.records import EvidenceItem, LabelCandidate
from profiling_assets.models.base import Embedder

# Enough chunks for a stable per-label mean; more only costs time.
MAX_BACKGROUND = 5_000
_SCORE_DIGITS = 4
# Calibrated embedder scores of real matches sit around 0.02–0.10; a literal mention
# outranks any of them.
KEYWORD_BOOST = 0.15
# Sections whose lines are the user's own words or actions; purchases are facts, and a
# bought item is not a wish for the next one.
KEYWORD_SECTIONS = ("浏览行为", "用户发言")


# Neutral passages in the documents' own shape: the label scores are calibrated against them.
# A fixed set, not the cohort's chunks, so one user's new data never shifts every other
# user's scores (and so never re-profiles them); generic, so they fit any business.
BACKGROUND_PASSAGES: tuple[str, ...] = (
    "## 基础信息\n- 女，30 岁，常住上海，2025-01-05 注册",
    "## 基础信息\n- 男，41 岁，常住成都，2025-02-11 注册",
    "## 用户发言\n- 2025-03-02 在微信说：“好的，谢谢”",
    "## 用户发言\n- 2025-03-04 在小程序说：“你们门店几点关门？”",
    "## 用户发言\n- 2025-03-05 在电话说：“停车方便吗，地址发我一下”",
    "## 用户发言\n- 2025-03-06 在微信说：“收到，我看一下”",
    "## 用户发言\n- 2025-03-07 在微信说：“［图片］”",
    "## 用户发言\n- 2025-03-08 在微信说：“周末有人吗”",
    "## 用户发言\n- 2025-03-09 在小程序说：“会员积分怎么用？”",
    "## 用户发言\n- 2025-03-10 在微信说：“我再想想”",
    "## 浏览行为\n- 浏览文章：《门店开业公告》（2025-03-01）",
    "## 浏览行为\n- 浏览文章：《会员日活动说明》（2025-03-03）",
    "## 浏览行为\n- 浏览视频：《门店环境介绍》（2025-03-04）",
    "## 浏览行为\n- 搜索：门店地址（2025-03-05）",
    "## 浏览行为\n- 收藏：《交通指引》（2025-03-06）",
    "## 消费记录\n### 其他消费\n- 项目：会员卡工本费；金额：20 元；日期：2025-03-02",
    "## 消费记录\n### 其他消费\n- 项目：停车券；金额：10 元；日期：2025-03-08",
    "## 用户发言\n- 2025-03-11 在微信说：“发票怎么开？”\n- 2025-03-11 在微信说：“好的”",
    "## 浏览行为\n- 浏览文章：《节假日营业时间》（2025-03-12）\n- 查看门店主页：总店",
)


class LabelLike(Protocol):
    """What the scorer needs of a label: its kind (the spec's group id), name, description
    and the keywords that name it literally."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def keywords(self) -> tuple[str, ...]: ...


def user_voice_lines(text: str) -> list[str]:
    """The list lines of a chunk that sit under a `KEYWORD_SECTIONS` heading."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip() in KEYWORD_SECTIONS
        elif line.startswith("- ") and inside:
            lines.append(line[2:])
    return lines


def keyword_hits(labels: Sequence[LabelLike], chunks: Sequence[tuple[str, str]]) -> dict[int, str]:
    """Label position → the first chunk (in the given order) whose user lines name it."""
    hits: dict[int, str] = {}
    for chunk_id, text in chunks:
        said = "\n".join(user_voice_lines(text)).lower()
        if not said:
            continue
        for i, label in enumerate(labels):
            if i not in hits and any(k.lower() in said for k in label.keywords):
                hits[i] = chunk_id
    return hits


def label_texts(labels: Sequence[LabelLike]) -> list[str]:
    """What is embedded for each label: the name is the most specific phrase a user would
    write; the description adds the synonyms, so both go into the query text."""
    return [f"{label.name}：{label.description}" for label in labels]


class LabelIndex:
    """The label matrix of one embedder, embedded once and reused for every user."""

    def __init__(
        self,
        embedder: Embedder,
        labels: Sequence[LabelLike],
        background: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        if not labels:
            raise ValueError("LabelIndex needs at least one label")
        self._embedder: Embedder | None = embedder
        self._make_embedder: Callable[[], Embedder] | None = None
        self.embedder_identity = str(embedder.identity)
        self.labels = list(labels)
        self.matrix = np.asarray(embedder.embed_queries(label_texts(self.labels)), np.float32)
        self.baseline = np.zeros(len(self.labels), dtype=np.float32)
        if background is not None and len(background) > 0:
            self.baseline = self._background_mean(background, seed)

    @classmethod
    def from_vectors(
        cls,
        labels: Sequence[LabelLike],
        matrix: np.ndarray,
        baseline: np.ndarray,
        embedder: Callable[[], Embedder],
        embedder_identity: str,
    ) -> LabelIndex:
        """An index from stored vectors; the embedder is built only if something needs it
        (`score_evidence`), so scoring stored chunk vectors loads no model."""
        if len(labels) != len(matrix) or len(labels) != len(baseline):
            raise ValueError(f"{len(labels)} labels for {len(matrix)} vectors")
        index = cls.__new__(cls)
        index._embedder = None
        index._make_embedder = embedder
        index.embedder_identity = embedder_identity
        index.labels = list(labels)
        index.matrix = np.asarray(matrix, dtype=np.float32)
        index.baseline = np.asarray(baseline, dtype=np.float32)
        return index

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            assert self._make_embedder is not None
            self._embedder = self._make_embedder()
        return self._embedder

    def _background_mean(self, background: np.ndarray, seed: int) -> np.ndarray:
        rows = np.asarray(background, dtype=np.float32)
        self._check_dim(rows)
        if len(rows) > MAX_BACKGROUND:
            pick = np.random.default_rng(seed).choice(len(rows), MAX_BACKGROUND, replace=False)
            rows = rows[pick]
        return (rows @ self.matrix.T).mean(axis=0)

    def _check_dim(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.matrix.shape[1]:
            raise ValueError(
                f"chunk vectors have shape {vectors.shape}; labels were embedded with "
                f"{self.matrix.shape[1]} dimensions by {self.embedder_identity}"
            )

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated best score per label and the row of the chunk that gave it."""
        vectors = np.asarray(vectors, dtype=np.float32)
        self._check_dim(vectors)
        sims = vectors @ self.matrix.T  # chunks × labels
        best_row = sims.argmax(axis=0)
        best = sims[best_row, np.arange(len(self.labels))] - self.baseline
        return best, best_row


def score_label_candidates(
    index: LabelIndex,
    chunk_ids: Sequence[str],
    vectors: np.ndarray,
    top_per_kind: int = 3,
    min_score: float = 0.0,
    hits: dict[int, str] | None = None,
) -> list[LabelCandidate]:
    """Top labels per kind over one user's chunks, best first, each citing its best chunk.

    `vectors` are the user's chunk vectors (rows aligned with `chunk_ids`) from the same
    embedder as the index; `min_score` is on the calibrated scale (see the module doc);
    `hits` (from `keyword_hits`, citing chunks among `chunk_ids`) boost the labels named.
    """
    if len(chunk_ids) != len(vectors):
        raise ValueError(f"{len(chunk_ids)} chunk ids for {len(vectors)} vectors")
    if not chunk_ids:
        return []
    best, best_row = index.scores(vectors)
    cited = [chunk_ids[row] for row in best_row]
    for i, chunk_id in (hits or {}).items():
        best[i] = max(float(best[i]), 0.0) + KEYWORD_BOOST
        cited[i] = chunk_id
    per_kind: dict[str, list[LabelCandidate]] = {}
    for i in np.argsort(-best, kind="stable"):
        label = index.labels[i]
        score = float(best[i])
        taken = per_kind.setdefault(label.kind, [])
        if score < min_score or len(taken) >= top_per_kind:
            continue
        taken.append(
            LabelCandidate(
                kind=label.kind,
                label=label.name,
                score=round(score, _SCORE_DIGITS),
                chunk_id=cited[i],
            )
        )
    return [candidate for kind in sorted(per_kind) for candidate in per_kind[kind]]


def score_evidence(
    index: LabelIndex,
    evidence: Sequence[EvidenceItem] | Sequence[tuple[str, str]],
    top_per_kind: int = 3,
    min_score: float = 0.0,
) -> list[LabelCandidate]:
    """`score_label_candidates` for chunks that have no vectors yet: embeds them as passages.

    Accepts evidence items or `(chunk_id, text)` pairs; a chunk retrieved for several
    questions is embedded once.
    """
    texts: dict[str, str] = {}
    for item in evidence:
        chunk_id, text = (item.chunk_id, item.text) if isinstance(item, EvidenceItem) else item
        texts.setdefault(chunk_id, text)
    if not texts:
        return []
    vectors = index.embedder.embed_passages(list(texts.values()))
    return score_label_candidates(index, list(texts), vectors, top_per_kind, min_score)
