"""`bench` rows for the LLM stage against one server: profiles/s with 1 and with N slots in
use, each against direct requests to the same server with the same prompts, and the prompt
tokens the server actually evaluated per user with its prompt cache (cache hits apart).

One offline server (`PROFILING_LLM_PARALLEL` = N slots) answers all four measurements, so
the ratios compare the stage's own cost (prompt building, checks, retries, ordered hand-over)
with nothing else changed. Runs alternate direct / stage so a warming machine favours
neither side.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from profiling_assets.config import Settings
from profiling_assets.core.profiling.run import (
    RETRY_RESERVE_TOKENS,
    ProfileInput,
    first_request,
    profile_users,
)
from profiling_assets.core.spec_rules import ProfilePolicy
from profiling_assets.models.base import LLMReply, ProfileLLM

TARGET_RATIO = 0.9


def _direct(
    llm: ProfileLLM, requests: list[tuple[list[dict[str, str]], dict[str, Any]]], slots: int
) -> tuple[float, list[LLMReply]]:
    """`generate()` alone on the prompts, `slots` at a time: requests/s and the replies."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=slots) as pool:
        replies = list(pool.map(lambda r: llm.generate(*r), requests))
    return len(requests) / (time.perf_counter() - started), replies


def _reset_slots(
    llm: ProfileLLM, request: tuple[list[dict[str, str]], dict[str, Any]], slots: int
) -> None:
    """Leave every slot holding the shared prefix only (system prompt + a placeholder user
    turn), as in the middle of a long run: without it a run would find whole prompts of the
    previous run in the slots and measure cache hits that a real run never gets."""
    messages, schema = request
    placeholder = [messages[0], {"role": "user", "content": "预热"}]
    with ThreadPoolExecutor(max_workers=slots) as pool:
        list(pool.map(lambda _: llm.generate(placeholder, schema, max_tokens=1), range(slots)))


def _tokens(prompt: list[int], cached: list[int]) -> dict[str, float]:
    evaluated = [p - c for p, c in zip(prompt, cached, strict=True)]
    return {
        "prompt_per_user": statistics.fmean(prompt),
        "evaluated_per_user": statistics.fmean(evaluated),
        "cached_per_user": statistics.fmean(cached),
    }


def llm_slot_rows(
    settings: Settings,
    llm: ProfileLLM,
    items: list[ProfileInput],
    policy: ProfilePolicy,
    slots: int,
) -> dict[str, Any]:
    """The four runs on `llm` (a server with `slots` slots) and what they show."""
    budget = settings.llm_prompt_token_budget
    retry_budget = budget - RETRY_RESERVE_TOKENS
    requests = [tuple(first_request(llm, item, policy, retry_budget)[:2]) for item in items]
    rows: dict[str, Any] = {"slots": slots, "users": len(items)}
    for n in sorted({1, slots}):
        _reset_slots(llm, requests[0], slots)  # type: ignore[arg-type]
        direct_rate, replies = _direct(llm, requests, n)  # type: ignore[arg-type]
        _reset_slots(llm, requests[0], slots)  # type: ignore[arg-type]
        started = time.perf_counter()
        outcomes = profile_users(
            llm, items, policy, n, token_budget=budget, max_retries=settings.llm_max_retries
        )
        stage_rate = len(outcomes) / (time.perf_counter() - started)
        rows[f"slots_{n}"] = {
            "stage_profiles_per_s": stage_rate,
            "direct_requests_per_s": direct_rate,
            "ratio": stage_rate / direct_rate if direct_rate else 0.0,
            "num_failed": sum(1 for o in outcomes if not o.ok),
            "num_retries": sum(max(0, o.attempts - 1) for o in outcomes),
            "stage_tokens": _tokens(
                [o.prompt_tokens for o in outcomes], [o.cached_tokens for o in outcomes]
            ),
            "direct_tokens": _tokens(
                [r.prompt_tokens for r in replies], [r.cached_tokens for r in replies]
            ),
        }
    # The stage at one slot; without the cache every prompt token is evaluated, so the whole
    # prompt is the "before" of the evaluated figure, and the cached part is the shared
    # prefix (each slot holds the previous user's prompt).
    one = rows["slots_1"]["stage_tokens"]
    whole = one["prompt_per_user"]
    rows["prompt_tokens"] = {
        "uncached_per_user": whole,
        "evaluated_per_user": one["evaluated_per_user"],
        "cached_per_user": one["cached_per_user"],
        "shared_prefix_share": one["cached_per_user"] / whole if whole else 0.0,
        "target_evaluated_share": 0.75,
    }
    rows["slots_speedup"] = (
        rows[f"slots_{slots}"]["stage_profiles_per_s"] / rows["slots_1"]["stage_profiles_per_s"]
        if rows["slots_1"]["stage_profiles_per_s"]
        else 0.0
    )
    rows["target_ratio"] = TARGET_RATIO
    return rows
