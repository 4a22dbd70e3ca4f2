"""The documents-at-scale measurement, alone in a module so its child process imports only
what the documents and chunks stages import (not Dagster, LanceDB or the models)."""

from __future__ import annotations

import resource
import time
from datetime import date
from pathlib import Path

from profiling_assets.core.chunking import ChunkingOptions, chunk_documents_frame
from profiling_assets.core.contract import SOURCE_TABLES
from profiling_assets.core.documents import SalesLayout, render_documents_frame
from profiling_assets.core.intake import validate_cohort
from profiling_assets.core.spec import load_spec
from profiling_assets.stores.source import list_cohorts, open_source, read_cohort_table


def documents_child(source: str) -> dict[str, float]:
    started = time.perf_counter()
    with open_source(Path(source)) as con:
        cohort = list_cohorts(con)[0]
        raw = {t: read_cohort_table(con, t, cohort) for t in SOURCE_TABLES}
    results = validate_cohort(raw, cohort, date(2026, 11, 26))
    del raw
    layout = SalesLayout.from_spec(load_spec())
    documents = render_documents_frame(**{t: r.accepted for t, r in results.items()}, layout=layout)
    del results
    chunks = chunk_documents_frame(documents, ChunkingOptions())
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "users": float(documents.height),
        "chunks": float(chunks.height),
        "seconds": seconds,
        "users_per_s": documents.height / seconds,
        "peak_rss_gib": peak_kib / 1024 / 1024,
    }
