"""What profiling one user gave (`ProfileOutcome`), and the figures of a run of them."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from profiling_assets.core.profiling.prompt import estimate_tokens
from profiling_assets.core.profiling.schema import UserProfile
from profiling_assets.models.base import FailureKind, LLMReply

# The figures an outcome sums over its attempts' replies (`LLMReply` names them alike).
_TOKEN_COUNTS = ("prompt_tokens", "cached_tokens", "completion_tokens")
_SECONDS = ("latency_s", "load_s", "eval_s")


@dataclass(frozen=True)
class ProfileOutcome:
    """A profile (with how it was obtained) or a failure with its reason."""

    user_id: str
    profile: UserProfile | None
    error: str | None = None
    attempts: int = 0
    attempt_errors: tuple[str, ...] = ()
    filled_fields: tuple[str, ...] = ()
    repaired_fields: tuple[str, ...] = ()
    novel_labels: tuple[str, ...] = ()
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, those the server reused from its cache
    completion_tokens: int = 0
    latency_s: float = 0.0
    load_s: float = 0.0
    eval_s: float = 0.0
    prompt_tokens_estimate: int = 0
    failure_kind: FailureKind | None = None  # the last attempt's, for a failed outcome
    attempt_kinds: tuple[FailureKind, ...] = ()  # one per failed attempt

    @property
    def ok(self) -> bool:
        return self.profile is not None

    @property
    def transport_only(self) -> bool:
        """Failed without a single answer: every attempt hit the server, not the user."""
        return (
            not self.ok
            and bool(self.attempt_kinds)
            and all(k == "transport" for k in self.attempt_kinds)
        )


@dataclass
class Usage:
    """One user's attempts so far: the summed reply figures and each failure."""

    totals: dict[str, Any] = field(
        default_factory=lambda: {**dict.fromkeys(_TOKEN_COUNTS, 0), **dict.fromkeys(_SECONDS, 0.0)}
    )
    errors: list[str] = field(default_factory=list)
    kinds: list[FailureKind] = field(default_factory=list)

    def add(self, reply: LLMReply) -> None:
        for name in self.totals:
            self.totals[name] += getattr(reply, name)

    def fail(self, reason: str, kind: FailureKind) -> None:
        self.errors.append(reason)
        self.kinds.append(kind)


@dataclass(frozen=True)
class Answered:
    """What a user's accepted answer became: the profile and which fields code set."""

    profile: UserProfile
    filled: Sequence[str]
    repaired: Sequence[str]
    novel: Sequence[str]


def build_outcome(
    user_id: str,
    first_messages: list[dict[str, str]],
    usage: Usage,
    attempts: int,
    answered: Answered | None,
) -> ProfileOutcome:
    """The outcome of a user's attempts: `answered`, or a failure (None) with the last
    attempt's reason and kind."""
    failed = answered is None
    filled, repaired = (answered.filled, answered.repaired) if answered else ((), ())
    return ProfileOutcome(
        user_id=user_id,
        profile=answered.profile if answered else None,
        error=usage.errors[-1] if failed else None,
        attempts=attempts,
        attempt_errors=tuple(usage.errors),
        # Repaired fields count as filled: their stored value is code's, not the model's.
        filled_fields=tuple(sorted({*filled, *repaired})),
        repaired_fields=tuple(repaired),
        novel_labels=tuple(answered.novel) if answered else (),
        prompt_tokens_estimate=sum(estimate_tokens(m["content"]) for m in first_messages),
        failure_kind=usage.kinds[-1] if failed else None,
        attempt_kinds=tuple(usage.kinds),
        **usage.totals,
    )


def server_outage(outcomes: Sequence[ProfileOutcome]) -> bool:
    """Every user of a batch failed and every attempt of each hit a transport error: the
    model server is gone, so asking the next users would only spend their timeouts."""
    return bool(outcomes) and all(o.transport_only for o in outcomes)


def _mean(outcomes: Sequence[ProfileOutcome], figure: str) -> float:
    return statistics.fmean(getattr(o, figure) for o in outcomes) if outcomes else 0.0


def summarize_outcomes(outcomes: Sequence[ProfileOutcome], wall_s: float) -> dict[str, float]:
    """Run figures for asset metadata (numbers, so the UI plots them)."""
    done = [o for o in outcomes if o.ok]
    kinds = Counter(o.failure_kind for o in outcomes if not o.ok)
    latencies = sorted(o.latency_s for o in outcomes if o.attempts)
    completion = sum(o.completion_tokens for o in outcomes)
    eval_s = sum(o.eval_s for o in outcomes)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0
    evaluated = [o.prompt_tokens - o.cached_tokens for o in outcomes]
    return {
        "num_users": len(outcomes),
        "num_profiles": len(done),
        "num_failed": len(outcomes) - len(done),
        "failure_rate": (len(outcomes) - len(done)) / len(outcomes) if outcomes else 0.0,
        "items_per_s": len(done) / wall_s if wall_s > 0 else 0.0,
        "prompt_tokens_per_user": _mean(outcomes, "prompt_tokens"),
        # What the server evaluated, and what its prompt cache spared it (the shared prefix).
        "prompt_tokens_evaluated_per_user": statistics.fmean(evaluated) if evaluated else 0.0,
        "prompt_tokens_cached_per_user": _mean(outcomes, "cached_tokens"),
        "completion_tokens_per_user": _mean(outcomes, "completion_tokens"),
        "tokens_per_s": completion / eval_s if eval_s > 0 else 0.0,
        "latency_p95_ms": p95 * 1000.0,
        "load_s": sum(o.load_s for o in outcomes),
        "num_retries": sum(max(0, o.attempts - 1) for o in outcomes),
        "num_repaired": sum(1 for o in outcomes if o.repaired_fields),
        **{f"num_failed_{kind}": kinds[kind] for kind in get_args(FailureKind)},
    }
