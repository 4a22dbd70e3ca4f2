"""User segments of a cohort: k-means over user vectors, k chosen by silhouette, Chinese names.

A user's vector is the mean of their chunk vectors, re-normalised, so Euclidean k-means on
it ranks like cosine similarity. Segment ids are ordered by size (0 = largest) so a re-run
on the same data gives the same ids and names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

# Fewer users than this cannot be split meaningfully (silhouette needs 2 ≤ k ≤ n - 1).
MIN_USERS_TO_SPLIT = 3
# Silhouette is O(n²); a seeded sample of this many users estimates it well enough.
SILHOUETTE_SAMPLE = 5_000
# A few k-means++ restarts guard against a bad start; more cost time on big cohorts.
KMEANS_INITS = 3
# How many of a segment's top projects and tags are tried when making its name unique.
NAME_CHOICES = 3
NAME_SEP = "·"
NO_PROJECT = "未定项目"
FALLBACK_NAME = "综合用户"


@dataclass(frozen=True)
class SegmentResult:
    assignments: dict[str, int]  # user id → segment id
    sizes: dict[int, int]  # segment id → number of users, largest first
    k: int
    silhouettes: dict[int, float]  # k tried → silhouette; empty when not split


def user_vectors(
    chunk_user_ids: Sequence[str], chunk_vectors: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Per user (sorted ids), the unit-normalised mean of their chunk vectors."""
    if len(chunk_user_ids) != len(chunk_vectors):
        raise ValueError(f"{len(chunk_user_ids)} user ids for {len(chunk_vectors)} vectors")
    if not chunk_user_ids:
        return [], np.zeros((0, chunk_vectors.shape[-1]), dtype=np.float32)
    users, inverse = np.unique(np.asarray(chunk_user_ids, dtype=object), return_inverse=True)
    # Sorting rows by user lets one reduceat sum each user's block, instead of a Python loop.
    order = np.argsort(inverse, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
    sums = np.add.reduceat(np.asarray(chunk_vectors, dtype=np.float32)[order], starts, axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return [str(u) for u in users], sums / np.where(norms == 0, 1.0, norms)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber segment ids so 0 is the largest; ties broken by the old id."""
    counts = np.bincount(labels)
    rank = np.empty_like(counts)
    rank[np.lexsort((np.arange(len(counts)), -counts))] = np.arange(len(counts))
    return rank[labels]


def cluster_users(
    user_ids: list[str],
    vectors: np.ndarray,
    k_range: tuple[int, int] = (2, 6),
    seed: int = 0,
) -> SegmentResult:
    """K-means for each k in `k_range` (inclusive), keeping the k with the best silhouette.

    Fewer than `MIN_USERS_TO_SPLIT` users, or fewer than two distinct vectors, make a single
    segment 0.
    """
    if len(user_ids) != len(vectors):
        raise ValueError(f"{len(user_ids)} user ids for {len(vectors)} vectors")
    n = len(user_ids)
    best_labels = np.zeros(n, dtype=np.int64)
    best_k = 1
    silhouettes: dict[int, float] = {}
    if n >= MIN_USERS_TO_SPLIT:
        x = np.asarray(vectors, dtype=np.float32)
        sample = min(n, SILHOUETTE_SAMPLE)
        # With duplicate points, k above the number of distinct ones would leave clusters
        # empty; silhouette also needs k ≤ n - 1.
        k_max = min(k_range[1], n - 1, len(np.unique(x, axis=0)))
        for k in range(max(2, k_range[0]), k_max + 1):
            labels = KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=seed).fit_predict(x)
            score = float(silhouette_score(x, labels, sample_size=sample, random_state=seed))
            silhouettes[k] = score
            if score > silhouettes.get(best_k, -np.inf):
                best_k, best_labels = k, labels
    ordered = _by_size(best_labels)
    counts = Counter(int(s) for s in ordered)
    return SegmentResult(
        assignments={u: int(s) for u, s in zip(user_ids, ordered, strict=True)},
        sizes={s: counts[s] for s in sorted(counts)},
        k=len(counts),
        silhouettes=silhouettes,
    )


def _ranked(members: list[str], values: Mapping[str, list[str]], cohort: Counter[str]) -> list[str]:
    """A segment's values, most characteristic first.

    Score = share in segment × lift over the cohort (share² / cohort share): frequency alone
    would name every segment after the cohort-wide favourite, lift alone after a rarity one
    member mentioned once.
    """
    counts = Counter(v for u in members for v in set(values.get(u, [])))
    n_cohort = sum(1 for vs in values.values() if vs) or 1

    def score(value: str) -> float:
        share = counts[value] / len(members)
        return share * share / (cohort[value] / n_cohort)

    return sorted(counts, key=lambda v: (-score(v), -counts[v], v))


def name_segments(
    assignments: Mapping[str, int],
    user_projects: Mapping[str, list[str]],
    user_tags: Mapping[str, list[str]],
) -> dict[int, str]:
    """A unique name per segment from its dominant project and tag: 全切双眼皮·价格敏感型.

    Larger segments choose first; a later segment whose best name is taken tries its next
    projects and tags, then falls back to numbering.
    """
    members: dict[int, list[str]] = {}
    for user, segment in assignments.items():
        members.setdefault(segment, []).append(user)
    cohort_projects = Counter(p for vs in user_projects.values() for p in set(vs))
    cohort_tags = Counter(t for vs in user_tags.values() for t in set(vs))
    names: dict[int, str] = {}
    for segment in sorted(members, key=lambda s: (-len(members[s]), s)):
        users = members[segment]
        projects = _ranked(users, user_projects, cohort_projects)[:NAME_CHOICES] or [NO_PROJECT]
        tags = _ranked(users, user_tags, cohort_tags)[:NAME_CHOICES]
        choices = [NAME_SEP.join((p, t)) for p in projects for t in tags] or projects
        if choices == [NO_PROJECT]:
            choices = [FALLBACK_NAME]
        taken = set(names.values())
        free = [c for c in choices if c not in taken]
        names[segment] = free[0] if free else f"{choices[0]}{NAME_SEP}{segment + 1}组"
    return dict(sorted(names.items()))
