"""The documents-at-scale measurement, alone in a module so its child process imports only
what the documents and chunks stages import (not Dagster, LanceDB or the models).

Peak memory is the child's own: `VmHWM` of `/proc/self/status` (the high-water mark of this
process's memory map, started afresh by `exec`) above `VmRSS` once the imports are done. Not
`ru_maxrss`: Linux carries that figure across `exec`, so a child started from a parent
holding 5 GiB reports at least 5 GiB — which is what the bench run inside the full pipeline
measured before (5.13 GiB for the same child that needs 1.5 GiB on its own).

Run standalone: `python -m profiling_assets.commands.scale_check SOURCE.duckdb [--workers N]`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import polars as pl

from profiling_assets.core.chunking import ChunkingOptions, chunk_documents_frame
from profiling_assets.core.document_frames import render_documents_frame
from profiling_assets.core.documents import SalesLayout
from profiling_assets.core.intake import validate_cohort
from profiling_assets.core.spec import load_spec
from profiling_assets.stores.source import CohortTables, list_cohorts, open_source

GIB = 1024**3
AS_OF = date(2026, 11, 26)


def _status_bytes(field: str) -> int:
    """A `kB` line of /proc/self/status in bytes (0 where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak() -> None:
    """Start the high-water mark again from the current RSS (Linux ≥ 4.0), so each phase's
    peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        pass


def _chunk_slice(payload: tuple[bytes, ChunkingOptions]) -> tuple[bytes, int]:
    """One worker's share: documents in as Arrow IPC, chunks out as Arrow IPC, and the
    worker's own peak RSS."""
    documents = pl.read_ipc(payload[0])
    chunks = chunk_documents_frame(documents, payload[1])
    return _ipc(chunks), _status_bytes("VmHWM")


def _ipc(frame: pl.DataFrame) -> bytes:
    return frame.write_ipc(None).getvalue()


def chunk_in_processes(
    documents: pl.DataFrame, options: ChunkingOptions, workers: int
) -> tuple[pl.DataFrame, int]:
    """The chunks of `documents` split by user over `workers` spawned processes, in order;
    also the largest worker peak RSS (workers do not count in the caller's own)."""
    step = -(-documents.height // workers)
    slices = [(_ipc(documents.slice(i, step)), options) for i in range(0, documents.height, step)]
    spawn = multiprocessing.get_context("spawn")  # fork under polars' threads can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        results = list(pool.map(_chunk_slice, slices))
    return pl.concat([pl.read_ipc(data) for data, _ in results]), max(p for _, p in results)


def documents_child(source: str, workers: int = 1) -> dict[str, float]:
    """Read + validate one cohort (intake, timed apart), then render + chunk it as the two
    assets do; chunking in `workers` processes when above 1."""
    baseline = _status_bytes("VmRSS")
    started = time.perf_counter()
    with open_source(Path(source)) as con:
        cohort = list_cohorts(con)[0]
        results = validate_cohort(CohortTables(con, cohort), cohort, AS_OF)
    accepted = {t: r.accepted for t, r in results.items()}
    del results
    intake_s = time.perf_counter() - started
    intake_peak = _status_bytes("VmHWM")
    reset_peak()
    stage_start = _status_bytes("VmRSS")
    started = time.perf_counter()
    layout = SalesLayout.from_spec(load_spec())
    documents = render_documents_frame(**accepted, layout=layout)
    render_s = time.perf_counter() - started
    options = ChunkingOptions()
    if workers > 1:
        chunks, worker_peak = chunk_in_processes(documents, options, workers)
    else:
        chunks, worker_peak = chunk_documents_frame(documents, options), 0
    seconds = time.perf_counter() - started
    stage_peak = _status_bytes("VmHWM")
    peak = max(intake_peak, stage_peak)
    return {
        "users": float(documents.height),
        "chunks": float(chunks.height),
        "workers": float(workers),
        "intake_s": intake_s,
        "render_s": render_s,
        "chunk_s": seconds - render_s,
        "seconds": seconds,
        "users_per_s": documents.height / seconds,
        "with_intake_users_per_s": documents.height / (seconds + intake_s),
        "baseline_rss_gib": baseline / GIB,
        "peak_rss_gib": peak / GIB,
        "peak_over_baseline_gib": (peak - baseline) / GIB,
        "intake_peak_over_baseline_gib": (intake_peak - baseline) / GIB,
        # What rendering + chunking add on top of the accepted rows already held.
        "stage_peak_over_start_gib": (stage_peak - stage_start) / GIB,
        "worker_peak_rss_gib": worker_peak / GIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a DuckDB source whose first cohort is measured")
    parser.add_argument("--workers", type=int, default=1, help="processes for chunking")
    args = parser.parse_args()
    print(json.dumps(documents_child(args.source, args.workers)))


if __name__ == "__main__":
    main()
