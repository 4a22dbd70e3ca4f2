"""`profiling-assets`: demo, generate, spec, check-source, doctor, eval, bench, backfill, diff."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from profiling_assets.config import Settings


def _settings() -> Settings:
    return Settings()


def cmd_generate(args: argparse.Namespace) -> int:
    from profiling_assets.synth.generate import write_source
    from profiling_assets.synth.sample import sample_tables

    settings = _settings()
    target = Path(args.out) if args.out else settings.source_path
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    spec = args.spec if args.spec is not None else settings.spec
    tables = sample_tables(spec, args.users, args.seed, args.months, args.style)
    counts = write_source(target, tables)
    took = time.perf_counter() - started
    listing = "，".join(f"{t} {n} 行" for t, n in counts.items())
    print(f"已生成样例数据 {target}（{took:.1f} 秒）：{listing}")
    return 0


def cmd_spec_check(args: argparse.Namespace) -> int:
    from profiling_assets.core.spec import SpecError, load_spec, spec_summary

    try:
        spec = load_spec(args.file)
    except SpecError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return 1
    print(f"✓ 业务规格有效 / spec is valid: {args.file}")
    print(spec_summary(spec))
    return 0


def cmd_spec_init(args: argparse.Namespace) -> int:
    from profiling_assets.core.spec import STARTER_SPEC

    target = Path(args.out)
    if target.exists() and not args.force:
        print(
            f"✗ {target} 已存在，不覆盖（--force 覆盖）/ exists, not overwritten", file=sys.stderr
        )
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(STARTER_SPEC.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"已写入起步模板 {target}；修改后运行 profiling-assets spec check {target}")
    return 0


def cmd_check_source(args: argparse.Namespace) -> int:
    import duckdb

    from profiling_assets.core.contract import SourceContractError
    from profiling_assets.core.spec import SpecError, load_spec
    from profiling_assets.source_check import inspect_source, render_source_report

    settings = _settings()
    try:
        spec = load_spec(args.spec if args.spec is not None else settings.spec)
        report = inspect_source(Path(args.path), spec.columns, settings.source_encoding)
    except (SourceContractError, SpecError, duckdb.Error, OSError) as exc:
        print(f"✗ 数据源无法读取 / source cannot be read: {exc}", file=sys.stderr)
        return 2
    print(render_source_report(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from profiling_assets.demo import run_demo

    return run_demo(_settings(), users=args.users, seed=args.seed, months=args.months)


def cmd_eval(args: argparse.Namespace) -> int:
    from profiling_assets.evaluate import run_eval

    data_dir = Path(args.data_dir) if args.data_dir else None
    settings = _settings()
    if args.spec is not None:
        settings = settings.model_copy(update={"spec": args.spec})
    return run_eval(settings, Path(args.source), data_dir)


def cmd_doctor(args: argparse.Namespace) -> int:
    from profiling_assets.doctor import render_findings, run_doctor

    findings, healthy = run_doctor(_settings())
    print(render_findings(findings, healthy))
    return 0 if healthy else 1


def cmd_backfill(args: argparse.Namespace) -> int:
    from profiling_assets.automation import backfill_selection, code_changed_assets, launch_backfill
    from profiling_assets.instance import open_instance
    from profiling_assets.pipeline import build_definitions

    settings = _settings()
    instance = open_instance(settings)
    defs = build_definitions(settings)
    changed = code_changed_assets(defs, instance)
    selection = backfill_selection(defs, changed)
    cohorts = instance.get_dynamic_partitions("cohort")
    if not selection:
        print("没有因模型或提示词变化而过期的资产 / nothing changed since the last materialization")
        return 0
    print("代码版本已变化 / changed: " + ", ".join(sorted(k.to_user_string() for k in changed)))
    print("回填资产 / backfill assets: " + ", ".join(k.to_user_string() for k in selection))
    print(f"批次 / cohorts ({len(cohorts)}): " + ", ".join(cohorts))
    if args.dry_run:
        return 0
    backfill_id = launch_backfill(defs, instance, selection, title="模型升级回填 model upgrade")
    print(
        f"已提交回填 {backfill_id}：由 dagster dev（或 dagster-daemon）执行，"
        "在 UI 的 /overview/backfills 查看"
    )
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    import json

    import duckdb

    from profiling_assets.core.profile_diff import diff_profiles, render_diff

    settings = _settings()
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute(
            "SELECT llm_identity, created_at, profile_json FROM user_profiles "
            "WHERE user_id = ? ORDER BY created_at DESC LIMIT 2",
            [args.user_id],
        ).fetchall()
    if len(rows) < 2:
        print(f"用户 {args.user_id} 的画像少于两个（{len(rows)} 个），无可比较 / fewer than two")
        return 1
    (after_id, after_at, after), (before_id, before_at, before) = rows
    changes = diff_profiles(json.loads(before), json.loads(after))
    print(
        render_diff(args.user_id, f"{before_id} @ {before_at}", f"{after_id} @ {after_at}", changes)
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from profiling_assets.bench import render_bench, run_bench

    users, big = (
        (args.users or 8, args.big_users or 20_000)
        if args.quick
        else (
            args.users or 40,
            args.big_users or 100_000,
        )
    )
    report = run_bench(_settings(), users=users, big_users=big, llm_sample=args.llm_sample)
    print(render_bench(report))
    print(f"\nJSON: {_settings().data_dir / 'bench' / 'bench.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="profiling-assets", description="用户画像数据资产 / evidence-backed user profiles"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write sample source tables (+ truth) to DuckDB")
    gen.add_argument("--users", type=int, default=1000)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--months", type=int, default=3)
    gen.add_argument("--style", choices=["standard", "alt"], default="standard")
    gen.add_argument("--out", help="target .duckdb (default: the configured source)")
    gen.add_argument("--spec", help="business spec (name or TOML; default: PROFILING_SPEC)")
    gen.set_defaults(func=cmd_generate)

    spec = sub.add_parser("spec", help="business spec: check a file, or write a starter")
    spec_sub = spec.add_subparsers(dest="spec_command", required=True)
    check = spec_sub.add_parser("check", help="validate a spec and print its summary")
    check.add_argument("file", help="TOML file or a shipped spec's name (clinic, skincare_shop)")
    check.set_defaults(func=cmd_spec_check)
    init = spec_sub.add_parser("init", help="write a commented starter spec")
    init.add_argument("--out", default="my_spec.toml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_spec_init)

    check_src = sub.add_parser(
        "check-source", help="read a source without running anything: rows, cohorts, rejects"
    )
    check_src.add_argument("path", help=".duckdb file, folder of Parquet/CSV/Excel, or .xlsx")
    check_src.add_argument("--spec", help="business spec whose [columns] mapping to apply")
    check_src.set_defaults(func=cmd_check_source)

    demo = sub.add_parser("demo", help="generate if absent, then materialize every cohort")
    demo.add_argument("--users", type=int, default=30)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--months", type=int, default=3)
    demo.set_defaults(func=cmd_demo)

    evaluate = sub.add_parser(
        "eval", help="run every cohort of a source with truth in its own data dir; print scores"
    )
    evaluate.add_argument("--source", required=True, help=".duckdb file or Parquet/CSV folder")
    evaluate.add_argument("--data-dir", help="where the run lands (default: data/eval/<stem>)")
    evaluate.add_argument("--spec", help="business spec the truth is written in")
    evaluate.set_defaults(func=cmd_eval)

    doctor = sub.add_parser("doctor", help="what is installed, reachable and missing")
    doctor.set_defaults(func=cmd_doctor)

    backfill = sub.add_parser("backfill", help="backfill what a model/prompt change made stale")
    backfill.add_argument("--stale", action="store_true", required=True)
    backfill.add_argument("--dry-run", action="store_true", help="print the selection only")
    backfill.set_defaults(func=cmd_backfill)

    bench = sub.add_parser("bench", help="measure every stage against the bare models")
    bench.add_argument("--quick", action="store_true", help="reduced sizes (8 users, 20k docs)")
    bench.add_argument("--users", type=int, help="users for the model stages")
    bench.add_argument("--big-users", type=int, help="users for the documents-at-scale test")
    bench.add_argument("--llm-sample", type=int, default=3, help="users for the bare LLM call")
    bench.set_defaults(func=cmd_bench)

    diff = sub.add_parser("diff", help="field-by-field diff of a user's two latest profiles")
    diff.add_argument("user_id")
    diff.set_defaults(func=cmd_diff)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
