"""`profiling-assets`: demo, generate, spec, check-source, doctor, eval, bench, backfill,
vectors, diff, export. Expected failures end in one sentence (`--verbose`: traceback)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from profiling_assets.config import Settings

if TYPE_CHECKING:
    from profiling_assets.commands.webserver import DagsterGraphQL


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
    if args.multi_id:
        from profiling_assets.core.spec import resolve_spec_path
        from profiling_assets.synth.multi_id import IDENTITY_SPEC, to_multi_id

        tables = to_multi_id(tables, args.seed)
        spec_file = target.with_suffix(".spec.toml")
        base = resolve_spec_path(spec).read_text(encoding="utf-8")
        spec_file.write_text(base.rstrip() + "\n" + IDENTITY_SPEC, encoding="utf-8")
    counts = write_source(target, tables)
    took = time.perf_counter() - started
    listing = "，".join(f"{t} {n} 行" for t, n in counts.items())
    print(f"已生成样例数据 {target}（{took:.1f} 秒）：{listing}")
    if args.multi_id:
        print(f"多 id 模式的业务规格（含 [identity]）：{spec_file}；运行前请设置 PROFILING_ID_KEY")
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

    from profiling_assets.commands.source_check import inspect_source, render_source_report
    from profiling_assets.core.contract import SourceContractError
    from profiling_assets.core.identity import IdentityKeyError, identity_key
    from profiling_assets.core.spec import SpecError, load_spec

    settings = _settings()
    try:
        spec = load_spec(args.spec if args.spec is not None else settings.spec)
        identity = None
        if spec.identity.declared:
            identity = (spec.identity, identity_key(settings.id_key.get_secret_value()))
        report = inspect_source(
            Path(args.path),
            spec.columns,
            settings.source_encoding,
            identity=identity,
            max_amount=spec.intake.max_amount,
        )
    except (SourceContractError, SpecError, IdentityKeyError, duckdb.Error, OSError) as exc:
        print(f"✗ 数据源无法读取 / source cannot be read: {exc}", file=sys.stderr)
        return 2
    print(render_source_report(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from profiling_assets.commands.demo import run_demo

    return run_demo(_settings(), users=args.users, seed=args.seed, months=args.months)


def cmd_eval(args: argparse.Namespace) -> int:
    from profiling_assets.commands.evaluate import run_eval

    data_dir = Path(args.data_dir) if args.data_dir else None
    settings = _settings()
    if args.spec is not None:
        settings = settings.model_copy(update={"spec": args.spec})
    return run_eval(settings, Path(args.source), data_dir)


def cmd_doctor(args: argparse.Namespace) -> int:
    from profiling_assets.commands.doctor import render_findings, run_doctor

    findings, healthy = run_doctor(_settings())
    print(render_findings(findings, healthy))
    return 0 if healthy else 1


def cmd_backfill(args: argparse.Namespace) -> int:
    from profiling_assets.commands.webserver import DagsterGraphQL, GraphQLError

    settings = _settings()
    try:
        if args.url:
            return _backfill_stale(DagsterGraphQL(args.url), args.dry_run)
        with _own_webserver(settings) as client:
            return _backfill_stale(client, args.dry_run)
    except GraphQLError as exc:
        print(f"✗ Dagster 网页服务出错 / webserver error: {exc}", file=sys.stderr)
        return 2


def _own_webserver(settings: Settings) -> AbstractContextManager[DagsterGraphQL]:
    """A webserver on this instance for the one command (none was given with --url)."""
    from profiling_assets.commands.instance import logs_dir, prepare_dagster_home
    from profiling_assets.commands.webserver import running_webserver

    print("启动 Dagster 网页服务以读取过期状态 / starting a Dagster webserver …", flush=True)
    home = prepare_dagster_home(settings)
    return running_webserver(home, logs_dir(settings) / "webserver.log")


def _backfill_stale(client: DagsterGraphQL, dry_run: bool) -> int:
    from profiling_assets.commands.backfill import (
        backfill_selection,
        code_changed_assets,
        fetch_asset_states,
        launch_backfill,
    )

    states, cohorts = fetch_asset_states(client)
    changed = code_changed_assets(states)
    selection = backfill_selection(states, changed)
    if not selection:
        print("没有因模型或提示词变化而过期的资产 / nothing changed since the last materialization")
        return 0
    print("代码版本已变化 / changed: " + ", ".join(sorted(k.to_user_string() for k in changed)))
    print("回填资产 / backfill assets: " + ", ".join(k.to_user_string() for k in selection))
    print(f"批次 / cohorts ({len(cohorts)}): " + ", ".join(cohorts))
    if dry_run:
        return 0
    backfill_id = launch_backfill(client, selection, cohorts, title="模型升级回填 model upgrade")
    print(
        f"已提交回填 {backfill_id}：由 dagster dev（或 dagster-daemon）执行，"
        "在 UI 的 /overview/backfills 查看"
    )
    return 0


def cmd_vectors_prune(args: argparse.Namespace) -> int:
    """Drop the vector tables of embedders no longer configured; a dry run unless --yes."""
    from profiling_assets.models.registry import embedder_identity
    from profiling_assets.stores.vectors import drop_tables, retired_tables, table_bytes

    settings = _settings()
    root = settings.lancedb_dir
    retired = retired_tables(root, embedder_identity(settings))
    if not retired:
        print("没有已退役嵌入模型的向量表 / no tables of retired embedders")
        return 0
    for name in retired:
        print(f"  {name}（{table_bytes(root, name) / 1e6:.1f} MB）")
    if not args.yes:
        print(f"试运行：未删除 {len(retired)} 个表；加 --yes 删除 / dry run, --yes drops them")
        return 0
    drop_tables(root, retired)
    print(f"已删除 {len(retired)} 个表 / dropped")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    import json

    from profiling_assets.core.profile_diff import diff_profiles, render_diff
    from profiling_assets.stores.warehouse_access import open_warehouse

    settings = _settings()
    with open_warehouse(settings) as con:
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


def cmd_export(args: argparse.Namespace) -> int:
    from profiling_assets.commands.export import export_profiles

    settings = _settings()
    out = Path(args.out)
    written = export_profiles(settings, args.format, out, args.cohort)
    scope = f"批次 {args.cohort}" if args.cohort else "全部批次"
    print(f"已导出 {written} 个用户的最新画像（{scope}）→ {out}（{args.format}，UTF-8）")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from profiling_assets.commands.bench import render_bench, run_bench

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
    gen.add_argument(
        "--multi-id",
        action="store_true",
        help="no shared user_id: tables keyed by member number, phone, openid, device id "
        "(+ identities, truth_identity); writes <out>.spec.toml with the [identity] section",
    )
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
        "check-source",
        help="read a source without running anything: rows, cohorts, rejects; with ids "
        "declared in the spec ([identity]), people stitched in memory first (PROFILING_ID_KEY)",
    )
    check_src.add_argument("path", help=".duckdb file, folder of Parquet/CSV/Excel, or .xlsx")
    check_src.add_argument(
        "--spec", help="business spec whose [columns], [identity] and [intake] to apply"
    )
    check_src.set_defaults(func=cmd_check_source)

    demo = sub.add_parser("demo", help="generate if absent, then materialize every cohort")
    demo.add_argument("--users", type=int, default=30)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--months", type=int, default=3)
    demo.set_defaults(func=cmd_demo)

    evaluate = sub.add_parser(
        "eval",
        help="run every cohort of a source with truth in its own data dir; print scores (and, "
        "with [identity] in the spec and a truth_identity table, stitching precision/recall)",
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
    backfill.add_argument(
        "--url",
        help="a running Dagster webserver (e.g. http://127.0.0.1:3000 of `dagster dev`); "
        "default: start one on this instance for the command",
    )
    backfill.set_defaults(func=cmd_backfill)

    bench = sub.add_parser("bench", help="measure every stage against the bare models")
    bench.add_argument("--quick", action="store_true", help="reduced sizes (8 users, 20k docs)")
    bench.add_argument("--users", type=int, help="users for the model stages")
    bench.add_argument("--big-users", type=int, help="users for the documents-at-scale test")
    bench.add_argument("--llm-sample", type=int, default=3, help="users for the bare LLM call")
    bench.set_defaults(func=cmd_bench)

    vectors = sub.add_parser("vectors", help="LanceDB vector tables")
    vectors_sub = vectors.add_subparsers(dest="vectors_command", required=True)
    prune = vectors_sub.add_parser(
        "prune", help="drop the tables of embedders no longer configured (dry run first)"
    )
    prune.add_argument("--yes", action="store_true", help="drop them (default: only list)")
    prune.set_defaults(func=cmd_vectors_prune)

    diff = sub.add_parser("diff", help="field-by-field diff of a user's two latest profiles")
    diff.add_argument("user_id")
    diff.set_defaults(func=cmd_diff)

    export = sub.add_parser(
        "export", help="latest profile per user (configured LLM) to Parquet / CSV / JSON Lines"
    )
    export.add_argument("--format", choices=["parquet", "csv", "jsonl"], required=True)
    export.add_argument("--cohort", help="one cohort (default: every cohort)")
    export.add_argument("--out", required=True, help="file to write (UTF-8; CSV with a BOM)")
    export.set_defaults(func=cmd_export)
    return parser


def _add_verbose(parser: argparse.ArgumentParser, top: bool) -> None:
    """`--verbose` before or after the command (`profiling-assets demo --verbose`)."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        # Only the top level sets the default: a subcommand's default would reset it.
        default=False if top else argparse.SUPPRESS,
        help="show the traceback of a failure instead of one sentence",
    )
    for action in parser._actions:  # argparse exposes subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbose(child, top=False)


def main(argv: Sequence[str] | None = None) -> int:
    from profiling_assets.commands.cli_errors import explain

    parser = build_parser()
    _add_verbose(parser, top=True)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("\n已中断 / interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        sentence = explain(exc)
        if sentence is None or args.verbose:
            raise  # a bug, or asked for: the whole traceback
        print(f"✗ {sentence}（--verbose 显示详情 / for the traceback）", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
