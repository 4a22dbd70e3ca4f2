"""Ask the model about one user (or many, bounded in parallel) until an answer passes.

Each attempt: `ProfileLLM.generate` → `answer.check_answer` → on success
`filling.fill_from_candidates`; on failure the reason goes back to the model as one more
message, up to `max_retries`. A user's bad answer never raises: it becomes a failed
`ProfileOutcome` with its reason.

A truncated answer (finish_reason "length") is never asked again as it was: first with
more answer room inside the model's context, then with the compact schema. Every failed
attempt has a `FailureKind`; the last one is the outcome's, and decides whether a later run
asks again (`stored.finished_input_keys`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Required, TypedDict, Unpack

from profiling_assets.core.profiling.answer import check_answer
from profiling_assets.core.profiling.filling import CANDIDATE_THRESHOLD, fill_from_candidates
from profiling_assets.core.profiling.outcome import Answered, ProfileOutcome, Usage, build_outcome
from profiling_assets.core.profiling.prompt import (
    COMPACT_PROMPT_TOKENS,
    build_profile_messages,
    estimate_message_tokens,
    evidence_aliases,
    shown_chunk_ids,
)
from profiling_assets.core.profiling.schema import profile_json_schema
from profiling_assets.core.records import EvidenceItem, LabelCandidate, UserFacts
from profiling_assets.core.spec_rules import ProfilePolicy, RuleVerdict
from profiling_assets.models.base import (
    LLMReply,
    ModelError,
    ProfileLLM,
    answer_limits,
    uses_compact_schema,
)

# Users handed to the pool ahead of the oldest one not yet returned, per slot: while one slow
# user (retries, a long answer) holds its slot, the other slots go on through up to this many
# users each; their outcomes wait, in order, behind it.
AHEAD_PER_SLOT = 4
# Room kept in the prompt budget for one retry's feedback (bad answer excerpt + reason).
RETRY_RESERVE_TOKENS = 240
_FEEDBACK_ANSWER_CHARS = 120
_FEEDBACK_REASON_CHARS = 200
# Kept free in the context when a truncated answer gets more room: chat-template tokens and
# the drift of a server's own token count against ours.
ANSWER_ROOM_MARGIN_TOKENS = 64
TRUNCATED_NOTE = "（输出被 max_tokens 截断）"


class ProfileInput(NamedTuple):
    facts: UserFacts
    evidence: list[EvidenceItem]
    candidates: list[LabelCandidate]
    verdict: RuleVerdict = RuleVerdict()


class ProfileOptions(TypedDict, total=False):
    """The keyword arguments of `profile_user` that a whole run shares."""

    token_budget: Required[int]
    max_retries: int
    candidate_threshold: float
    backoff_s: float


class FirstRequest(NamedTuple):
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    aliases: dict[str, str] | None  # compact answers cite E1, E2 … mapped back to chunk ids


def first_request(
    llm: ProfileLLM,
    item: ProfileInput,
    policy: ProfilePolicy,
    budget: int,
    compact: bool | None = None,
) -> FirstRequest:
    """The messages and schema of a user's first attempt (also the benchmark's bare call).

    Compact (the backend's `compact_schema`, or `compact` when given) gets the compact
    prompt and schema: the narrative only, evidence under short aliases."""
    facts, evidence, candidates, verdict = item
    compact = uses_compact_schema(llm) if compact is None else compact
    if compact:
        budget = min(budget, COMPACT_PROMPT_TOKENS)
    messages = build_profile_messages(
        facts, evidence, candidates, budget, compact=compact, policy=policy, verdict=verdict
    )
    shown = set(shown_chunk_ids(messages, evidence, compact=compact))
    # Only what the model was shown may be cited; the enum lets a grammar enforce it.
    if compact:
        aliases = {a: cid for a, cid in evidence_aliases(evidence).items() if cid in shown}
        return FirstRequest(messages, profile_json_schema(sorted(aliases), compact=True), aliases)
    evidence_ids = {e.chunk_id for e in evidence}
    citable = shown | {c.chunk_id for c in candidates if c.chunk_id in evidence_ids}
    vocabulary = dict(policy.vocabulary) if policy.closed else None
    return FirstRequest(messages, profile_json_schema(sorted(citable), vocabulary=vocabulary), None)


@dataclass(frozen=True)
class _Ask:
    """One request: the schema's clean first request, and how this one differs from it."""

    request: FirstRequest
    compact: bool
    feedback: tuple[dict[str, str], ...] = ()  # the bad answer and the reason, fed back
    max_tokens: int | None = None  # None: the backend's own
    grown: bool = False

    @property
    def messages(self) -> list[dict[str, str]]:
        return [*self.request.messages, *self.feedback]

    def with_feedback(self, answer: str, reason: str) -> _Ask:
        """This request with the bad answer and its reason fed back: in a user turn after
        the answer (chat templates such as Gemma's require alternating roles), both cut so
        the retry stays inside `RETRY_RESERVE_TOKENS`."""
        feedback = (
            {"role": "assistant", "content": answer[:_FEEDBACK_ANSWER_CHARS]},
            {
                "role": "user",
                "content": f"上一次输出有问题：{reason[:_FEEDBACK_REASON_CHARS]}。"
                "请修正后重新输出完整 JSON。",
            },
        )
        return replace(self, feedback=feedback)


def more_answer_room(limit: int, context: int, prompt_tokens: int) -> int | None:
    """A larger answer limit that still fits the context with the prompt (at most double,
    so a model that runs on does not burn the whole context), or None when there is none."""
    if limit <= 0 or context <= 0:
        return None
    grown = min(2 * limit, context - prompt_tokens - ANSWER_ROOM_MARGIN_TOKENS)
    return grown if grown > limit else None


def _after_truncation(
    ask: _Ask, reply: LLMReply, llm: ProfileLLM, item: ProfileInput, policy: ProfilePolicy,
    budget: int,
) -> _Ask | None:  # fmt: skip
    """The next request after a truncated answer, never the same one again: more answer room
    inside the context first, then the compact schema; None when both were tried."""
    default_limit, context = answer_limits(llm)
    if not ask.grown:
        prompt_tokens = reply.prompt_tokens or estimate_message_tokens(ask.messages)
        room = more_answer_room(ask.max_tokens or default_limit, context, prompt_tokens)
        if room is not None:
            return replace(ask, max_tokens=room, grown=True)
    if not ask.compact:
        compact = first_request(llm, item, policy, budget, compact=True)
        return _Ask(compact, compact=True, max_tokens=ask.max_tokens, grown=True)
    return None


def _generate(llm: ProfileLLM, ask: _Ask) -> LLMReply:
    # max_tokens only when changed, so a backend without the argument still works.
    extra = {} if ask.max_tokens is None else {"max_tokens": ask.max_tokens}
    return llm.generate(ask.messages, ask.request.schema, **extra)


def _refusal(reply: LLMReply) -> str | None:
    """Why the model declined to answer, or None when it answered."""
    if reply.refusal or reply.finish_reason == "content_filter":
        return f"模型拒绝回答：{(reply.refusal or reply.finish_reason)[:200]}"
    return None


def profile_user(
    llm: ProfileLLM,
    item: ProfileInput,
    policy: ProfilePolicy,
    *,
    token_budget: int,
    max_retries: int = 2,
    candidate_threshold: float = CANDIDATE_THRESHOLD,
    backoff_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> ProfileOutcome:
    """Profile one user; never raises for a bad answer or a transport error."""
    facts, evidence, candidates, verdict = item
    budget = token_budget - (RETRY_RESERVE_TOKENS if max_retries > 0 else 0)
    first = first_request(llm, item, policy, budget)
    ask: _Ask | None = _Ask(first, compact=uses_compact_schema(llm))
    evidence_ids = {e.chunk_id for e in evidence}
    usage = Usage()
    attempts = 0
    while ask is not None and attempts <= max_retries:
        attempts += 1
        try:
            reply = _generate(llm, ask)
        except ModelError as exc:
            usage.fail(f"模型调用失败：{exc}", exc.kind)
            if exc.kind == "refused":
                break  # the same request is declined again; settled (see base.FailureKind)
            if attempts <= max_retries:
                sleep(backoff_s * 2 ** (attempts - 1))  # transport trouble: give the server room
            continue
        usage.add(reply)
        refusal = _refusal(reply)
        if refusal is not None:
            usage.fail(refusal, "refused")
            break
        checked = check_answer(
            reply.text, facts, verdict, policy, evidence_ids, ask.request.aliases
        )
        if checked.profile is not None:
            profile, filled = fill_from_candidates(
                checked.profile, facts, candidates, evidence, policy, verdict, candidate_threshold
            )
            answered = Answered(profile, filled, checked.repaired, checked.novel)
            return build_outcome(facts.user_id, first.messages, usage, attempts, answered)
        assert checked.reason is not None
        if reply.finish_reason == "length":
            usage.fail(checked.reason + TRUNCATED_NOTE, "truncated")
            # None when more room and the compact schema were both tried: the loop ends.
            ask = _after_truncation(ask, reply, llm, item, policy, budget)
            continue
        usage.fail(checked.reason, checked.kind)
        ask = ask.with_feedback(reply.text, checked.reason)
    return build_outcome(facts.user_id, first.messages, usage, attempts, None)


class ProfileStream:
    """Outcomes in the order of the items, with `parallel` users being asked at all times (a
    server with that many slots stays busy: no batch waits for its slowest user).

    At most `AHEAD_PER_SLOT` × `parallel` users are handed out ahead of the one the caller
    waits for, so a slow user holds back a bounded number of finished outcomes. `close()`
    (the caller stopped at an outage) cancels the users not yet started and waits for those
    in flight; `finished()` then gives what was answered meanwhile, in order, so nothing
    answered is thrown away."""

    def __init__(
        self, one: Callable[[ProfileInput], ProfileOutcome], items: Iterable[ProfileInput],
        parallel: int,
    ) -> None:  # fmt: skip
        slots = max(1, parallel)
        self._one = one
        self._queue = iter(items)
        self._window = AHEAD_PER_SLOT * slots
        self._pool = ThreadPoolExecutor(max_workers=slots)
        self._pending: deque[Future[ProfileOutcome]] = deque()
        self._closed = False
        self._fill()

    def _fill(self) -> None:
        while not self._closed and len(self._pending) < self._window:
            item = next(self._queue, None)
            if item is None:
                return
            self._pending.append(self._pool.submit(self._one, item))

    def __iter__(self) -> Iterator[ProfileOutcome]:
        return self

    def __next__(self) -> ProfileOutcome:
        if not self._pending:
            self.close()
            raise StopIteration
        try:
            outcome = self._pending.popleft().result()
        except StopIteration as exc:  # from the worker: it must not read as the end here
            raise RuntimeError("profiling a user raised StopIteration") from exc
        self._fill()
        return outcome

    def close(self) -> None:
        """Ask nobody new; wait for the requests in flight."""
        self._closed = True
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)

    def finished(self) -> list[ProfileOutcome]:
        """After `close()`: the outcomes answered past the last one taken, in order, up to
        the first user that was never asked."""
        done = []
        while self._pending and not self._pending[0].cancelled():
            done.append(self._pending.popleft().result())
        return done


def iter_profiles(
    llm: ProfileLLM,
    items: Iterable[ProfileInput],
    policy: ProfilePolicy,
    parallel: int,
    **options: Unpack[ProfileOptions],
) -> ProfileStream:
    """`profile_user` over `items` as a `ProfileStream` with `parallel` requests in flight."""

    def one(item: ProfileInput) -> ProfileOutcome:
        return profile_user(llm, ProfileInput(*item), policy, **options)

    return ProfileStream(one, items, parallel)


def profile_users(
    llm: ProfileLLM,
    items: Sequence[ProfileInput],
    policy: ProfilePolicy,
    parallel: int,
    **options: Unpack[ProfileOptions],
) -> list[ProfileOutcome]:
    """Profile many users with `parallel` requests in flight; order is kept."""
    stream = iter_profiles(llm, items, policy, parallel, **options)
    with closing(stream):
        return list(stream)
