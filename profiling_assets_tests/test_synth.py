"""The sample-data generator: deterministic, on contract, with planted truth and ~2% bad rows."""

from __future__ import annotations

import time
from datetime import date, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from profiling_assets.core.contract import MAX_PLAUSIBLE_AMOUNT, SOURCE_TABLES
from profiling_assets.core.spec import LEVELS, load_spec
from profiling_assets.synth import generate_tables, write_source
from profiling_assets.synth.personas import ANOMALIES, label_names
from profiling_assets.synth.phrases import phrasebook

CLINIC = load_spec("clinic")
SPENDING_LEVELS = PURCHASE_INTENTS = LEVELS

USERS = 2000
SEED = 11
EVENT_TABLES = {"sales": "order_date", "behaviour": "event_time", "chat": "sent_at"}
LATEST_VALID = date(2026, 12, 31)


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    return generate_tables(USERS, SEED)


def _invalid_kinds(tables: dict[str, pl.DataFrame], name: str) -> pl.DataFrame:
    """The rows of an event table that break a rule of the brief, each with the first it breaks.

    Written apart from the generator so that the test checks the data, not the code.
    """
    when_column = EVENT_TABLES[name]
    fmt = "%Y-%m-%d" if name == "sales" else "%Y-%m-%d %H:%M:%S"
    df = tables[name].with_columns(
        pl.col(when_column).str.strptime(pl.Datetime("us"), fmt, strict=False).alias("__when")
    )
    user = pl.col("user_id")
    checks = [
        (user.is_null() | (user.str.strip_chars() == ""), "missing_user"),
        (~user.is_in(tables["truth"]["user_id"].implode()), "unknown_user"),
        (pl.col("__when").is_null(), "bad_date"),
        (pl.col("__when") > datetime(2026, 12, 31, 23, 59, 59), "future_date"),
    ]
    if name == "sales":
        checks.append((pl.col("amount") < 0, "negative_amount"))
        checks.append((pl.col("amount") > MAX_PLAUSIBLE_AMOUNT, "absurd_amount"))
    text = {"behaviour": "target", "chat": "message"}.get(name)
    if text:
        checks.append((pl.col(text).str.strip_chars() == "", "empty_text"))
    reason = pl.lit(None, pl.String)
    for condition, kind in reversed(checks):
        reason = pl.when(condition).then(pl.lit(kind)).otherwise(reason)
    # Beyond single-row rules: every row after the first that repeats an id.
    key = SOURCE_TABLES[name].key
    exact = tables[name].is_duplicated()
    repeat = (
        pl.when(pl.Series(exact)).then(pl.lit("exact_duplicate")).otherwise(pl.lit("duplicate_id"))
    )
    reason = (
        pl.when(reason.is_null() & ~pl.col(key).is_first_distinct()).then(repeat).otherwise(reason)
    )
    return df.with_columns(reason.alias("reason")).filter(pl.col("reason").is_not_null())


def test_same_seed_gives_identical_tables() -> None:
    first = generate_tables(300, 5)
    second = generate_tables(300, 5)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].equals(second[name]), name
    other = generate_tables(300, 6)
    assert not first["chat"].equals(other["chat"])


def test_tables_meet_the_source_contract(tables: dict[str, pl.DataFrame]) -> None:
    for name, contract in SOURCE_TABLES.items():
        assert tables[name].columns == contract.names, name
    users = tables["users"].schema
    assert users["user_id"] == pl.String and users["age"] == pl.Int64
    assert users["signup_date"] == pl.Date
    assert tables["sales"].schema["amount"] == pl.Float64
    # Dates of the event tables are text so that broken values can exist; the pipeline parses.
    for name, column in EVENT_TABLES.items():
        assert tables[name].schema[column] == pl.String
    assert tables["users"]["cohort"].null_count() == tables["users"].height


def test_truth_covers_every_user_with_known_labels(tables: dict[str, pl.DataFrame]) -> None:
    truth = tables["truth"]
    assert truth.schema["tags"] == pl.List(pl.String)
    assert truth.schema["signal_ids"] == pl.List(pl.String)
    users = tables["users"].filter(pl.col("user_id").str.strip_chars() != "")["user_id"]
    assert sorted(truth["user_id"]) == sorted(users.unique())
    assert truth.height == USERS
    assert set(truth["intended_project"]) <= set(label_names("project"))
    assert set(truth["spending_level"]) == set(SPENDING_LEVELS)
    assert set(truth["purchase_intent"]) == set(PURCHASE_INTENTS)
    assert set(truth["concerns"].explode()) <= set(label_names("concern"))
    assert set(truth["tags"].explode()) <= set(label_names("tag"))
    assert set(truth["anomalies"].explode().drop_nulls()) <= set(ANOMALIES)
    assert truth["tags"].list.len().is_between(2, 4).all()
    assert truth["concerns"].list.len().is_between(1, 3).all()


def test_signups_span_several_monthly_cohorts(tables: dict[str, pl.DataFrame]) -> None:
    months = tables["users"]["signup_date"].dt.strftime("%Y-%m").unique().sort().to_list()
    assert months == [f"2025-{m:02d}" for m in range(1, 7)]
    short = generate_tables(200, 1, start=date(2025, 11, 1), months=3)
    assert short["users"]["signup_date"].dt.strftime("%Y-%m").n_unique() == 3


@pytest.mark.parametrize("name", list(EVENT_TABLES))
def test_invalid_rows_are_a_small_share_of_several_kinds(
    tables: dict[str, pl.DataFrame], name: str
) -> None:
    invalid = _invalid_kinds(tables, name)
    share = invalid.height / tables[name].height
    assert 0.01 <= share <= 0.04, share
    assert invalid["reason"].n_unique() >= 6, invalid["reason"].value_counts()


def test_signal_ids_point_at_real_rows_of_the_user(tables: dict[str, pl.DataFrame]) -> None:
    owners = pl.concat(
        tables[name].select(pl.col(SOURCE_TABLES[name].key).alias("id"), "user_id")
        for name in EVENT_TABLES
    )
    signals = tables["truth"].select("user_id", pl.col("signal_ids").alias("id")).explode("id")
    assert signals["id"].null_count() == 0
    assert signals["id"].is_unique().all()
    joined = signals.join(owners, on="id", how="left", suffix="_row")
    # Each signal id names exactly one row (invalid duplicates never reuse a signal id).
    assert joined.height == signals.height
    assert (joined["user_id"] == joined["user_id_row"]).all()


def test_intended_project_shows_in_chat_and_behaviour(tables: dict[str, pl.DataFrame]) -> None:
    book = phrasebook("standard")
    texts = pl.concat(
        [
            tables["chat"].select(pl.col("message_id").alias("id"), pl.col("message").alias("t")),
            tables["behaviour"].select(pl.col("event_id").alias("id"), pl.col("target").alias("t")),
        ]
    )
    text_of = dict(zip(texts["id"], texts["t"], strict=True))
    for row in tables["truth"].iter_rows(named=True):
        project = row["intended_project"]
        cues = (*book.aliases[project], *book.project_chat[project])
        said = [text_of[i] for i in row["signal_ids"] if i in text_of]
        assert any(cue in text for text in said for cue in cues), (row["user_id"], said)


def test_label_names_are_rarely_said_verbatim(tables: dict[str, pl.DataFrame]) -> None:
    messages = tables["chat"]["message"]
    verbatim = messages.str.contains("|".join(label_names("project"))).mean()
    assert verbatim is not None and verbatim < 0.2


def test_alt_style_words_things_differently() -> None:
    standard = generate_tables(300, 5)
    alt = generate_tables(300, 5, style="alt")
    # The same people; only the spending level may differ, since it is the spec's rule over
    # the amounts actually planted and the styles' unrelated purchases cost differently.
    same = ["signal_ids", "spending_level"]
    assert standard["truth"].drop(same).equals(alt["truth"].drop(same))
    spent = standard["truth"]["spending_level"] == alt["truth"]["spending_level"]
    assert spent.mean() > 0.8
    shared = set(standard["chat"]["message"]) & set(alt["chat"]["message"])
    assert len(shared) / alt["chat"]["message"].n_unique() < 0.05, shared


def test_realistic_amounts_and_activity(tables: dict[str, pl.DataFrame]) -> None:
    truth = tables["truth"]
    valid = tables["sales"].filter(pl.col("amount").is_between(0, MAX_PLAUSIBLE_AMOUNT))
    eyelid = valid.filter(pl.col("item") == "全切双眼皮")["amount"]
    assert eyelid.min() >= 6000 and eyelid.max() <= 12000
    spend = (
        truth.filter(pl.col("anomalies").list.len() == 0)
        .join(valid.group_by("user_id").agg(pl.col("amount").sum()), on="user_id", how="left")
        .fill_null(0)
        .group_by("spending_level")
        .agg(pl.col("amount").median())
    )
    medians = dict(spend.iter_rows())
    assert medians["低"] < medians["中"] < medians["高"]
    per_user = tables["chat"].group_by("user_id").len()["len"]
    assert 2 <= per_user.median() <= 10


def test_ten_thousand_users_are_fast() -> None:
    began = time.perf_counter()
    big = generate_tables(10_000, 1)
    assert time.perf_counter() - began < 15
    assert big["truth"].height == 10_000


def test_write_source_round_trips_into_duckdb(
    tables: dict[str, pl.DataFrame], tmp_path: Path
) -> None:
    path = tmp_path / "source.duckdb"
    counts = write_source(path, tables)
    assert counts == {name: df.height for name, df in tables.items()}
    counts_again = write_source(path, tables)  # replaces, never appends
    assert counts_again == counts
    with duckdb.connect(str(path), read_only=True) as con:
        for name, df in tables.items():
            (stored,) = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()
            assert stored == df.height
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ?",
                ["users"],
            ).fetchall()
        )
        assert types["signup_date"] == "DATE"
        back = con.sql("SELECT * FROM sales").pl()
    columns = tables["sales"].columns
    assert back.sort(columns, nulls_last=True).equals(
        tables["sales"].sort(columns, nulls_last=True)
    )


def test_write_source_refuses_unknown_tables(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown source tables"):
        write_source(tmp_path / "x.duckdb", {"users; DROP TABLE x": pl.DataFrame()})


def test_clinic_labels_are_complete_and_well_described() -> None:
    assert len(label_names("project")) >= 10
    assert len(label_names("concern")) >= 8
    assert len(label_names("tag")) >= 10
    for _, label in CLINIC.labels:
        assert 12 <= len(label.description) <= 40, label
    assert set(ANOMALIES) <= set(CLINIC.anomaly_names)


def test_truth_spending_level_is_the_specs_rule_over_the_planted_orders() -> None:
    """The eval scored spending 0.40 against persona levels the clinic spec's thresholds do
    not define; the truth now applies the spec's rule to what was planted."""
    from profiling_assets.core.spec import load_spec

    tables = generate_tables(200, 3)
    spending = load_spec("clinic").spending
    assert spending.high is not None and spending.mid is not None
    totals = tables["sales"].group_by("user_id").agg(pl.col("amount").sum())
    truth = tables["truth"].join(totals, on="user_id", how="left").fill_null(0.0)
    expected = truth["amount"].map_elements(
        lambda t: "高" if t >= spending.high else "中" if t >= spending.mid and t > 0 else "低",
        return_dtype=pl.String,
    )
    # Planted invalid rows (duplicates, bad amounts) may move a few users across a line.
    assert (expected == truth["spending_level"]).mean() > 0.95
