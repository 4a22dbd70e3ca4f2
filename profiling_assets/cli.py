"""`profiling-assets`: demo, generate, doctor, eval, bench, backfill, diff."""

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
    from profiling_assets.synth.generate import generate_tables, write_source

    settings = _settings()
    target = Path(args.out) if args.out else settings.source_path
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tables = generate_tables(users=args.users, seed=args.seed, months=args.months, style=args.style)
    counts = write_source(target, tables)
    took = time.perf_counter() - started
    listing = "，".join(f"{t} {n} 行" for t, n in counts.items())
    print(f"已生成样例数据 {target}（{took:.1f} 秒）：{listing}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from profiling_assets.demo import run_demo

    return run_demo(_settings(), users=args.users, seed=args.seed, months=args.months)


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
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="generate if absent, then materialize every cohort")
    demo.add_argument("--users", type=int, default=24)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--months", type=int, default=3)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
