"""`profiling-assets eval`: the whole pipeline on a dataset with truth, in its own data dir,
then the scores per cohort and overall (users-weighted) as a table and `scores.json`."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from profiling_assets.commands.demo import (
    CohortRun,
    StitchingFailed,
    materialize_cohorts,
    stitch_and_list_cohorts,
)
from profiling_assets.config import Settings
from profiling_assets.core.contract import TRUTH_IDENTITY_TABLE, TRUTH_TABLE, SourceContractError
from profiling_assets.core.csv_lines import AUTO_ENCODING
from profiling_assets.core.identity import IdentityKeyError, pairwise_scores
from profiling_assets.core.quality import QualityScores, combine_scores, render_scores
from profiling_assets.core.spec import ProfileSpec, SpecError, load_spec
from profiling_assets.models.registry import embedder_identity, llm_identity
from profiling_assets.stores.identity import Stitching, load_stitching, stitched_rows_against_truth
from profiling_assets.stores.source import (
    ColumnMapping,
    check_source,
    has_table,
    has_truth,
    list_cohorts,
    open_source,
)
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.warehouse import table_exists
from profiling_assets.stores.warehouse_access import open_warehouse, warehouse_exists

EXIT_BAD_SOURCE = 2
SCORES_FILE = "scores.json"
OVERALL = "overall"


class EvalError(Exception):
    """The evaluation cannot start; the message says why (exit code 2)."""


def source_name(source: Path) -> str:
    """`data/eval/<name>`: a file's stem or a folder's name."""
    return (source.name if source.is_dir() else source.stem) or "source"


def eval_settings(base: Settings, source: Path, data_dir: Path | None) -> Settings:
    """The configured models, but a separate data dir: never the main one, nor the shared
    storage the pipeline's workers write (an evaluation is one machine's run)."""
    source = source.resolve()
    target = (data_dir or base.data_dir / "eval" / source_name(source)).resolve()
    if target == base.data_dir.resolve():
        raise EvalError(f"评估目录不能是主数据目录 / eval data dir must not be {base.data_dir}")
    if source == target / "warehouse.duckdb":
        raise EvalError("数据源不能是评估仓库本身 / the source cannot be the eval warehouse")
    return base.model_copy(update={"data_dir": target, "source": source, "storage_uri": ""})


def check_eval_source(
    source: Path,
    columns: ColumnMapping | None = None,
    encoding: str = AUTO_ENCODING,
    stitching: Stitching | None = None,
) -> list[str]:
    """The source's cohorts, or `EvalError` when it is missing, broken or has no truth."""
    if not source.exists():
        raise EvalError(f"数据源不存在 / source not found: {source}")
    try:
        with open_source(source, columns, encoding, stitching) as con:
            check_source(con)
            if not has_truth(con):
                raise EvalError(
                    f"数据源没有 `{TRUTH_TABLE}` 表，无法评估 / source {source} has no "
                    f"`{TRUTH_TABLE}` table (user_id, tags, intended_project, spending_level, "
                    "purchase_intent …): nothing to score against"
                )
            return list_cohorts(con)
    except SourceContractError as error:
        raise EvalError(f"数据源不符合约定 / source contract: {error}") from error


def read_scores(settings: Settings, runs: list[CohortRun]) -> dict[str, QualityScores]:
    """The `profile_quality` row each cohort's run wrote, by cohort."""
    if not warehouse_exists(settings):
        return {}
    with open_warehouse(settings) as con:
        if not table_exists(con, TABLES.quality):
            return {}
        rows = con.sql(
            f'SELECT * FROM "{TABLES.quality.name}" WHERE list_contains(?, run_id) ORDER BY cohort',
            params=[[run.run_id for run in runs]],
        ).pl()
    fields = list(QualityScores.model_fields)
    return {row["cohort"]: QualityScores(**{f: row[f] for f in fields}) for row in rows.to_dicts()}


def score_stitching(
    settings: Settings, spec: ProfileSpec, stitching: Stitching | None
) -> dict[str, float] | None:
    """Pairwise precision and recall of the stitched people over the rows the source's
    `truth_identity` table names; None without ids or without that table."""
    if stitching is None:
        return None
    with open_source(settings.source_path, spec.columns, settings.source_encoding) as con:
        if not has_table(con, TRUTH_IDENTITY_TABLE):
            return None
        truth = con.sql(f"SELECT * FROM {TRUTH_IDENTITY_TABLE}").pl()
        pairs = stitched_rows_against_truth(con, stitching, truth)
    precision, recall = pairwise_scores(pairs["predicted"], pairs["true"])
    return {"pairwise_precision": precision, "pairwise_recall": recall, "num_rows": pairs.height}


def run_eval(base: Settings, source: Path, data_dir: Path | None = None) -> int:
    started = time.perf_counter()
    try:
        settings = eval_settings(base, source, data_dir)
        spec = load_spec(settings.spec)
        stitching = None
        if spec.identity.declared:
            if not settings.source_path.exists():
                raise EvalError(f"数据源不存在 / source not found: {settings.source_path}")
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            stitch_and_list_cohorts(settings)  # cohorts are those of stitched people
            key = settings.id_key.get_secret_value()
            stitching = load_stitching(spec.identity, key, settings.identity_map_path)
        cohorts = check_eval_source(
            settings.source_path, spec.columns, settings.source_encoding, stitching
        )
    except (EvalError, SpecError, IdentityKeyError, StitchingFailed) as error:
        print(f"错误 / error: {error}")
        return EXIT_BAD_SOURCE
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"评估数据源 / source: {settings.source_path}")
    print(f"评估目录 / eval data dir: {settings.data_dir}")
    print(f"批次 / cohorts: {', '.join(cohorts)}")
    runs = materialize_cohorts(settings, cohorts)
    per_cohort = read_scores(settings, runs)
    scored = {c: s for c, s in per_cohort.items() if s.num_truth_users}
    overall = combine_scores(scored.values())
    identities = {
        "llm_identity": str(llm_identity(settings)),
        "embedder_identity": str(embedder_identity(settings)),
    }
    print(f"\n评估结果 / scores（{identities['llm_identity']}）")
    print(render_scores({**scored, OVERALL: overall}))
    stitching_figures = score_stitching(settings, spec, stitching)
    if stitching_figures:
        print(
            "身份拼接 / identity stitching（按行两两）：precision "
            f"{stitching_figures['pairwise_precision']:.4f}，recall "
            f"{stitching_figures['pairwise_recall']:.4f}（{stitching_figures['num_rows']} 行）"
        )
    report = {
        "source": str(settings.source_path),
        "data_dir": str(settings.data_dir),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **identities,
        "evidence_top_n": settings.evidence_top_n,
        "runs": [run._asdict() for run in runs],
        "cohorts": {c: s.model_dump() for c, s in per_cohort.items()},
        OVERALL: overall.model_dump(),
        "identity_stitching": stitching_figures,
    }
    path = settings.data_dir / SCORES_FILE
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"\n已写入 / written: {path}（{time.perf_counter() - started:.1f} 秒）")
    missing = [run.cohort for run in runs if not run.success or run.cohort not in per_cohort]
    if missing:
        print(f"未完成的批次 / cohorts without scores: {', '.join(missing)}")
        return 1
    return 0
