"""Property tests of the CSV intake: line endings × quoting × field counts × encodings ×
line breaks inside quoted fields. Whatever the file, reading it never raises; every physical
line is the header, part of exactly one record, or blank; every record lands exactly once
(accepted + rejected = read, per table and partition); a rejected record keeps its masked text
and the SHA-256 of its original bytes."""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiling_assets.core.csv_lines import read_csv_bytes
from profiling_assets.core.pii import mask_pii
from profiling_assets.stores.source import UNASSIGNED_COHORT
from profiling_assets_tests.source_intake import intake

HEADER = ["event_id", "user_id", "event_type", "target", "event_time"]
BREAK = re.compile(r"\r\n|\n|\r")
PROPERTY = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same 50 files every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Pieces of field text: commas, quotes and line breaks that need quoting, Chinese and emoji,
# a quote inside a word, and personal data that must come out masked.
TOKENS = [
    "浏览",
    "双眼皮",
    "，",
    ",",
    '"',
    "\n",
    " ",
    "x",
    '5"寸',
    "😀",
    "13812345678",
    "zhang.san@example.com",
    "11010519900307123X",
]
TEXT = st.lists(st.sampled_from(TOKENS), max_size=4).map("".join)
TIME = st.sampled_from(["2024-02-01 10:00:00", "2024/5/5 10:00", "2024年5月5日", "昨天", ""])
# ok: as written; fewer: the last field left off (padded, then judged); extra: one field too
# many; after_quote: text after a closing quote. The last two are malformed records.
SHAPES = ["ok", "ok", "ok", "fewer", "extra", "after_quote"]
MALFORMED_SHAPES = {"extra", "after_quote"}


@dataclass(frozen=True)
class Row:
    marker: str
    values: list[str]
    shape: str
    quote_all: bool
    inner_breaks: list[str]  # how each line break inside a quoted field is written


@st.composite
def rows(draw: st.DrawFn) -> list[Row]:
    out = []
    for index in range(draw(st.integers(min_value=1, max_value=8))):
        values = [
            f"e{index:03d}x",
            draw(st.sampled_from(["u1", "u1", "ghost"])),
            draw(TEXT),
            draw(TEXT),
            draw(TIME),
        ]
        breaks = draw(st.lists(st.sampled_from(["\n", "\r\n"]), min_size=8, max_size=8))
        shape, quote_all = draw(st.sampled_from(SHAPES)), draw(st.booleans())
        out.append(Row(values[0], values, shape, quote_all, breaks))
    return out


def field(value: str, quote: bool) -> str:
    if quote or any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def render(row: Row) -> str:
    """The record's text as it is in the file (without its final line break)."""
    values = row.values[:-1] if row.shape == "fewer" else list(row.values)
    cells = [field(v, row.quote_all) for v in values]
    if row.shape == "extra":
        cells.append("多余")
    if row.shape == "after_quote":
        cells[3] = '"' + values[3].replace('"', '""') + '"多出来'
    text = ",".join(cells)
    breaks = iter(row.inner_breaks * 8)
    return re.sub(r"\n", lambda _: next(breaks), text)


@dataclass(frozen=True)
class Written:
    data: bytes
    records: dict[int, tuple[Row, bytes]]  # first line → (row, original bytes of the record)
    blank: set[int]
    num_lines: int  # physical lines, header included


def write_behaviour(
    table_rows: list[Row], encoding: str, endings: list[str], blanks: list[int], final: bool
) -> Written:
    codec = "utf-8" if encoding == "utf-8-sig" else encoding
    prefix = codecs.BOM_UTF8 if encoding == "utf-8-sig" else b""
    chunks = [",".join(HEADER)]
    records: dict[int, tuple[Row, bytes]] = {}
    blank: set[int] = set()
    line = 2
    for index, row in enumerate(table_rows):
        text = render(row)
        records[line] = (row, text.encode(codec))
        chunks.append(text)
        line += 1 + len(BREAK.findall(text))
        for _ in range(blanks[index % len(blanks)]):
            chunks.append("")
            blank.add(line)
            line += 1
    while not final and chunks[-1] == "":
        # A blank last line without a line break is no line at all: the file just ends.
        chunks.pop()
        line -= 1
        blank.discard(line)
    data = ""
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        data += chunk + ("" if last and not final else endings[index % len(endings)])
    return Written(prefix + data.encode(codec), records, blank, line - 1)


FILES = st.fixed_dictionaries(
    {
        "rows": rows(),
        "encoding": st.sampled_from(["utf-8", "utf-8-sig", "gb18030"]),
        "endings": st.sampled_from(
            [["\r\n"], ["\n"], ["\r"], ["\r\n", "\n"], ["\n", "\r\n", "\r\n"]]
        ),
        "blanks": st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=3),
        "final": st.booleans(),
    }
)


def expected_text(row: Row) -> str:
    """The record's text as rejected_rows keeps a malformed one: line breaks as "\n", masked."""
    return mask_pii(BREAK.sub("\n", render(row)))


@PROPERTY
@given(FILES)
def test_every_physical_line_is_accounted_for_once(case: dict) -> None:
    written = write_behaviour(
        case["rows"], case["encoding"], case["endings"], case["blanks"], case["final"]
    )
    read = read_csv_bytes(written.data, "behaviour.csv")
    assert read.header == HEADER
    taken: list[int] = []
    spans = {line: span for line, span in zip(read.row_lines, read.row_spans, strict=True)}
    spans |= {line: span for line, span, *_ in read.malformed}
    for line, span in spans.items():
        taken += range(line, line + span)
    taken += read.blank_lines
    assert sorted(taken) == list(range(2, written.num_lines + 1))  # each line exactly once
    assert set(spans) == set(written.records)
    assert set(read.blank_lines) == written.blank
    malformed = {line for line, *_ in read.malformed}
    expected = {line for line, (row, _) in written.records.items() if row.shape in MALFORMED_SHAPES}
    assert malformed == expected
    for line, _, text, _, sha in read.malformed:
        row, original = written.records[line]
        assert sha == hashlib.sha256(original).hexdigest()
        assert mask_pii(text) == expected_text(row)


def write_folder(folder: Path, written: Written, encoding: str, ending: str) -> None:
    codec = "utf-8" if encoding == "utf-8-sig" else encoding
    prefix = codecs.BOM_UTF8 if encoding == "utf-8-sig" else b""
    others = {
        "users": "user_id,gender,signup_date" + ending + "u1,女,2024-01-05" + ending,
        "sales": "order_id,user_id,item,amount,order_date" + ending,
        "chat": "message_id,user_id,message,sent_at" + ending,
    }
    for table, text in others.items():
        (folder / f"{table}.csv").write_bytes(prefix + text.encode(codec))
    (folder / "behaviour.csv").write_bytes(written.data)


@PROPERTY
@given(FILES)
def test_every_record_lands_once_masked_and_traceable(case: dict) -> None:
    written = write_behaviour(
        case["rows"], case["encoding"], case["endings"], case["blanks"], case["final"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_folder(folder, written, case["encoding"], case["endings"][0])
        results = intake(folder)  # never raises, whatever the file holds
    landed: dict[str, int] = {}
    by_line = {line: row for line, (row, _) in written.records.items()}
    for cohort, by_table in results.items():
        for table, result in by_table.items():
            assert result.accepted.height + result.rejected.height == result.num_read, table
        behaviour = by_table["behaviour"]
        for marker in behaviour.accepted["event_id"].to_list():
            landed[marker] = landed.get(marker, 0) + 1
        for rejected in behaviour.rejected.iter_rows(named=True):
            row, original = written.records[rejected["source_line"]]
            landed[row.marker] = landed.get(row.marker, 0) + 1
            assert rejected["source"] == "behaviour.csv"
            assert rejected["source_sha256"] == hashlib.sha256(original).hexdigest()
            raw_row = json.loads(rejected["raw_row"])
            if row.shape in MALFORMED_SHAPES:
                assert cohort == UNASSIGNED_COHORT
                assert raw_row["csv_line"] == expected_text(row)
            else:
                assert rejected["row_key"] == row.marker
                values = row.values[:-1] if row.shape == "fewer" else row.values
                given_values = [v or None for v in values] + [None] * (5 - len(values))
                masked = [None if v is None else mask_pii(v) for v in given_values]
                assert raw_row == dict(zip(HEADER, masked, strict=True))
    assert landed == {row.marker: 1 for row in by_line.values()}
    total = sum(r["behaviour"].num_read for r in results.values())
    assert total == len(written.records)
