"""Batched rendering and chunking (bounded memory) give exactly the unbatched result."""

from __future__ import annotations

from datetime import date

from profiling_assets.core.chunking import ChunkingOptions, chunk_documents_frame
from profiling_assets.core.contract import SOURCE_TABLES
from profiling_assets.core.document_frames import render_documents_frame
from profiling_assets.core.intake import validate_cohort
from profiling_assets.synth import generate_tables


def test_batches_of_users_change_nothing() -> None:
    tables = generate_tables(users=9, seed=4, months=1)
    results = validate_cohort({t: tables[t] for t in SOURCE_TABLES}, "2025-01", date(2026, 1, 1))
    accepted = {t: r.accepted for t, r in results.items()}
    whole = render_documents_frame(**accepted)
    batched = render_documents_frame(**accepted, batch_users=2)
    assert whole.height == accepted["users"].height
    assert batched.equals(whole)
    options = ChunkingOptions()
    assert chunk_documents_frame(whole, options, batch_users=4).equals(
        chunk_documents_frame(whole, options)
    )
