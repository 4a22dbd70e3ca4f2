"""Evidence-cited user profiles from the configured LLM, kept per model identity and run."""

import time
from contextlib import closing
from datetime import UTC, datetime
from itertools import islice

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from profiling_assets.assets.metadata import only_when_worked, ownership, stored_table
from profiling_assets.config import Settings
from profiling_assets.core.contract import SOURCE_TABLES as SOURCE_CONTRACT
from profiling_assets.core.profiling.outcome import (
    ProfileOutcome,
    server_outage,
    summarize_outcomes,
)
from profiling_assets.core.profiling.plan import PendingProfile, ProfilePlan, plan_profiles
from profiling_assets.core.profiling.prompt import PROMPT_VERSION
from profiling_assets.core.profiling.run import iter_profiles
from profiling_assets.core.profiling.schema import UserProfile, render_profile_markdown
from profiling_assets.core.profiling.stored import (
    failure_kinds,
    finished_input_keys,
    latest_profiles,
    open_failures,
    outcome_rows,
)
from profiling_assets.core.records import UserFacts
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.core.spec_rules import ProfilePolicy, build_policy
from profiling_assets.executors import model_step_tags
from profiling_assets.models.registry import ModelIdentities
from profiling_assets.partitions import cohort_partitions
from profiling_assets.pools import GPU_POOL
from profiling_assets.resources import ModelHub
from profiling_assets.stores.files import replace_cohort_files
from profiling_assets.stores.identity import follow_person_merges
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.vectors import VectorStore
from profiling_assets.stores.warehouse import append_rows, read_partition

PROFILES_CODE_VERSION = "profiles-v1"
SOURCE_TABLES = tuple(SOURCE_CONTRACT)


def build_profile_assets(
    settings: Settings, spec: ProfileSpec, identities: ModelIdentities
) -> list:
    llm_id = str(identities.llm)
    # Compact or full answers: it changes the outputs, so the code version carries it.
    schema = identities.llm_schema
    embedder_id = identities.embedder
    policy = build_policy(spec)
    spec_hash = spec.part_hash("profiles")
    # A step the model server failed as a whole is retried by Dagster after a pause; the
    # users it finished are skipped then (their profiles are stored batch by batch).
    retry = (
        dg.RetryPolicy(
            max_retries=settings.llm_step_retries,
            delay=settings.llm_step_retry_delay_s,
            backoff=dg.Backoff.EXPONENTIAL,
        )
        if settings.llm_step_retries
        else None
    )

    def plan_cohort(
        context: dg.AssetExecutionContext, duckdb: DuckDBResource, models: ModelHub
    ) -> ProfilePlan:
        """The cohort's users to profile (`plan_profiles`), from its tables, evidence,
        chunks and vectors and what this model already settled."""
        cohort = context.partition_key
        with duckdb.get_connection() as con:
            tables = {t.name: read_partition(con, t, cohort) for t in TABLES.source}
            if spec.identity.declared and tables["users"].height:
                moved = follow_person_merges(con, cohort, tables["users"]["user_id"].to_list())
                context.log.info("%d history rows followed merged or moved people", moved)
            evidence = read_partition(con, TABLES.evidence, cohort)
            chunks = read_partition(con, TABLES.chunks, cohort)
            done = latest_profiles(read_partition(con, TABLES.profiles, cohort), llm_id)
            failed = read_partition(con, TABLES.failures, cohort)
        vectors = VectorStore(settings.lancedb_dir, embedder_id).cohort_frame(cohort)
        finished = finished_input_keys(done, failed, llm_id, settings.retry_failed_profiles)
        return plan_profiles(
            tables,
            evidence,
            vectors,
            chunks,
            finished,
            llm_id,
            PROMPT_VERSION,
            spec,
            policy,
            label_index=models.label_index,
            answer_schema=schema,
        )

    @dg.asset(
        partitions_def=cohort_partitions,
        deps=["profile_evidence", *SOURCE_TABLES],
        group_name="profiles",
        kinds={"duckdb", "json"},
        pool=GPU_POOL,
        op_tags=model_step_tags(),
        retry_policy=retry,
        code_version=f"{PROFILES_CODE_VERSION}|{PROMPT_VERSION}|{spec_hash}|{llm_id}|{schema}|{embedder_id}",
        description="One validated, evidence-cited UserProfile per user; history kept per model "
        "(failures, with reason and kind, go to the table profile_failures).",
        **ownership("user_profiles"),
    )
    def user_profiles(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
        models: ModelHub,
    ) -> dg.MaterializeResult:
        cohort = context.partition_key
        plan = plan_cohort(context, duckdb, models)
        context.log.info("%d to profile, %d unchanged", len(plan.pending), plan.num_unchanged)
        started = time.perf_counter()
        outcomes, outage = _profile_in_batches(
            context, settings, duckdb, models, policy, plan.pending, llm_id
        )
        with duckdb.get_connection() as con:
            latest = latest_profiles(read_partition(con, TABLES.profiles, cohort), llm_id)
        replace_cohort_files(
            settings.profiles_dir,
            cohort,
            zip(latest["user_id"], latest["profile_json"], strict=True),
            ".json",
        )
        metadata = {
            # No users asked, no speed: rates are left out rather than plotted as 0.
            **only_when_worked(
                summarize_outcomes(outcomes, time.perf_counter() - started), bool(outcomes)
            ),
            "num_unchanged": plan.num_unchanged,
            "num_novel_labels": sum(len(o.novel_labels) for o in outcomes),
            "num_rule_anomalies": sum(len(p.item.verdict.anomalies) for p in plan.pending),
            "num_latest_profiles": latest.height,
            "llm_identity": llm_id,
            "llm_schema": schema,
            "prompt_version": PROMPT_VERSION,
            **stored_table(duckdb, TABLES.profiles, cohort),
        }
        if outage:
            # Red on purpose: a server that answered nobody is not a cohort of bad users.
            # What finished is stored; the transport failures do not settle, so a retry (or
            # the next run) asks those users again without PROFILING_RETRY_FAILED_PROFILES.
            raise dg.Failure(
                description=f"模型服务不可用：连续 {outage} 个用户的每次调用都是传输错误，"
                f"已停止（{outcomes[-1].error}）。已完成的画像已保存，这些用户下次运行自动重试。",
                metadata=metadata,
            )
        return dg.MaterializeResult(
            metadata={**metadata, "sample": dg.MetadataValue.md(_sample_markdown(latest))}
        )

    @dg.asset_check(
        asset=user_profiles,
        description="Share of the cohort's users whose latest outcome is a failure is in bound.",
    )
    def profile_failure_rate(
        context: dg.AssetCheckExecutionContext,
        duckdb: DuckDBResource,
    ) -> dg.AssetCheckResult:
        cohort = context.partition_key
        with duckdb.get_connection() as con:
            profiles = read_partition(con, TABLES.profiles, cohort)
            failures = read_partition(con, TABLES.failures, cohort)
        failed, tried = open_failures(profiles, failures, llm_id)
        rate = failed.height / tried if tried else 0.0
        kinds = failure_kinds(failed)
        rows = zip(failed["user_id"], kinds, failed["reason"], strict=True)
        reasons = "\n".join(f"- {u}（{k}）：{r}" for u, k, r in list(rows)[:20])
        return dg.AssetCheckResult(
            passed=rate <= settings.max_failure_rate,
            metadata={
                "failure_rate": rate,
                "num_failed": failed.height,
                "num_tried": tried,
                "num_transport": int((kinds == "transport").sum()),
                "max_failure_rate": settings.max_failure_rate,
                "failures": dg.MetadataValue.md(reasons or "无"),
            },
        )

    return [user_profiles, profile_failure_rate]


def _profile_in_batches(
    context: dg.AssetExecutionContext,
    settings: Settings,
    duckdb: DuckDBResource,
    models: ModelHub,
    policy: ProfilePolicy,
    pending: list[PendingProfile],
    llm_id: str,
) -> tuple[list[ProfileOutcome], int]:
    """Profile and write batch by batch (a crash keeps finished profiles; a re-run skips
    them), with `llm_parallel` requests in flight across batch boundaries (`iter_profiles`),
    so the server's slots never wait for a batch's slowest user. Stops at a batch the server
    failed as a whole (`server_outage`); returns the outcomes and the size of that batch (0
    when none)."""
    cohort, outcomes = context.partition_key, []
    if not pending:
        return outcomes, 0  # nothing to ask: the model is not even built
    step = max(4, 2 * settings.llm_parallel)

    def write(batch: list[PendingProfile], results: list[ProfileOutcome]) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = outcome_rows(cohort, context.run_id, llm_id, PROMPT_VERSION, batch, results, now)
        with duckdb.get_connection() as con:
            # One profile per user, input and model, whichever run made it.
            append_rows(con, TABLES.profiles, rows[0])
            append_rows(con, TABLES.failures, rows[1])

    stream = iter_profiles(
        models.llm,
        [p.item for p in pending],
        policy,
        settings.llm_parallel,
        token_budget=settings.llm_prompt_token_budget,
        max_retries=settings.llm_max_retries,
    )
    with closing(stream):
        for start in range(0, len(pending), step):
            batch = pending[start : start + step]
            results = list(islice(stream, len(batch)))
            write(batch, results)
            if server_outage(results):
                stream.close()
                # What the other slots answered meanwhile is kept; the rest was not asked.
                after, meanwhile = start + len(batch), stream.finished()
                write(pending[after : after + len(meanwhile)], meanwhile)
                # Listed before the outage batch: the step's failure quotes the last outcome.
                outcomes.extend([*meanwhile, *results])
                context.log.error(
                    "%d users in a row got no answer at all (%s); %d not asked",
                    len(results),
                    results[-1].error,
                    len(pending) - after - len(meanwhile),
                )
                return outcomes, len(results)
            outcomes.extend(results)
    return outcomes, 0


def _sample_markdown(latest: pl.DataFrame) -> str:
    if latest.height == 0:
        return "（本批次没有画像）"
    row = latest.row(0, named=True)
    profile = UserProfile.model_validate_json(row["profile_json"])
    return render_profile_markdown(profile, UserFacts.model_validate_json(row["facts_json"]))
