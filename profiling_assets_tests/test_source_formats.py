"""Real data in (issue 11): CSV as companies hand it over (CRLF / LF / mixed endings, UTF-8 with
or without BOM, GB18030/GBK), Excel workbooks, the spec's column mapping, Chinese dates and
amounts, personal data masked at intake, and `profiling-assets check-source`."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pytest
import xlsxwriter
from polars.testing import assert_frame_equal

from profiling_assets.commands.cli import main
from profiling_assets.commands.source_check import inspect_source
from profiling_assets.config import Settings
from profiling_assets.core.contract import SOURCE_TABLES, SourceContractError
from profiling_assets.core.spec import SPECS_DIR, load_spec
from profiling_assets.core.validate import ValidationResult, validate_table
from profiling_assets.stores.source import (
    UNASSIGNED_COHORT,
    list_cohorts,
    open_source,
    read_cohort_table,
)
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.sample_runs import cohort_instance
from profiling_assets_tests.source_intake import TODAY, intake

TABLES = tuple(SOURCE_TABLES)
EOL = re.compile(rb"\r\n|\n|\r")


def accepted(results: dict[str, dict[str, ValidationResult]], table: str) -> pl.DataFrame:
    key = SOURCE_TABLES[table].key
    return pl.concat([r[table].accepted for r in results.values()]).sort(key)


def rejected(results: dict[str, dict[str, ValidationResult]], table: str) -> pl.DataFrame:
    return pl.concat([r[table].rejected for r in results.values()])


def assert_accounted(results: dict[str, dict[str, ValidationResult]]) -> None:
    for by_table in results.values():
        for result in by_table.values():
            assert result.accepted.height + result.rejected.height == result.num_read


def write_csv(
    path: Path,
    frame: pl.DataFrame,
    encoding: str = "utf-8",
    eol: str | list[str] = "\n",
    bom: bool = False,
) -> Path:
    """RFC 4180 CSV as Excel writes it; `eol` a list: one line ending per record, cycled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    endings = [eol] if isinstance(eol, str) else eol
    out = io.StringIO(newline="")
    rows = [frame.columns, *(["" if v is None else str(v) for v in r] for r in frame.iter_rows())]
    for index, row in enumerate(rows):
        csv.writer(out, lineterminator=endings[index % len(endings)]).writerow(row)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + out.getvalue().encode(encoding))
    return path


def text_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return pl.DataFrame(
        {c: [r.get(c) for r in rows] for c in columns}, schema=dict.fromkeys(columns, pl.String)
    )


# -- 1. the bug: one LF line in a CRLF file ---------------------------------------------------

VALID_LF_LINE = "e77,u1,浏览文章,双眼皮恢复期多久？,2024-02-01 10:00:00"
MALFORMED_LF_LINE = 'e78,u1,"浏览文章"多出来,双眼皮,2024-02-01 10:00:00'


def crlf_corpus_with_one_lf_line(folder: Path, line: str) -> Path:
    corpus.write_csv_folder(folder, malformed=False)
    for path in folder.glob("*.csv"):
        # Line breaks inside quoted fields become CRLF too, as a Windows export writes them.
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    with (folder / "behaviour.csv").open("ab") as f:
        f.write(line.encode("utf-8") + b"\n")  # appended by another tool
    return folder


@pytest.mark.parametrize("line", [VALID_LF_LINE, MALFORMED_LF_LINE], ids=["valid", "malformed"])
def test_crlf_files_with_one_lf_line_still_read_every_cohort(tmp_path: Path, line: str) -> None:
    """Was: DuckDB's "CSV Parser state machine reached an invalid state" for the whole source,
    before any cohort ran. Now the line is read or rejected, and nothing else changes."""
    folder = crlf_corpus_with_one_lf_line(tmp_path / "source", line)
    results = intake(folder)
    assert set(results) == {corpus.COHORT, corpus.FUTURE_COHORT, UNASSIGNED_COHORT}
    assert_accounted(results)
    for table in TABLES:
        read = sum(r[table].num_read for r in results.values())
        extra = 1 if table == "behaviour" else 0
        assert read == corpus.num_source_records(table, csv_source=False) + extra, table
    behaviour = rejected(results, "behaviour")
    if line == VALID_LF_LINE:
        assert "e77" in accepted(results, "behaviour")["event_id"].to_list()
    else:
        bad = behaviour.filter(pl.col("reason").str.contains("CSV 第"))
        last_line = len(EOL.split((folder / "behaviour.csv").read_bytes().rstrip(b"\n")))
        assert bad["source_line"].to_list() == [last_line]
        assert bad["cohort"].to_list() == [UNASSIGNED_COHORT]
    # The CRLF lines read as before: the same rows as the LF original.
    original = intake(corpus.write_csv_folder(tmp_path / "lf", malformed=False))
    for table in ("users", "sales", "chat"):
        assert_frame_equal(accepted(results, table), accepted(original, table))


# -- 2. encodings -----------------------------------------------------------------------------


def test_file_in_no_encoding_we_read_is_a_clear_error_naming_file_and_line(tmp_path: Path) -> None:
    folder = corpus.write_csv_folder(tmp_path / "source", malformed=False)
    rows = ["event_id,user_id,event_type,target,event_time", "e1,u1,a,b,2024-02-01"]
    rows += [f"e{i},u1,café crème,naïve,2024-02-01" for i in range(2, 5)]
    (folder / "behaviour.csv").write_bytes("\n".join(rows).encode("latin-1"))
    with pytest.raises(SourceContractError) as error, open_source(folder):
        pass
    assert "behaviour.csv" in str(error.value)
    assert "line 3" in str(error.value)
    assert "PROFILING_SOURCE_ENCODING" in str(error.value)


def test_encoding_set_by_hand_reads_and_rejects_the_lines_that_do_not_decode(
    tmp_path: Path,
) -> None:
    folder = corpus.write_csv_folder(tmp_path / "source", malformed=False)
    with (folder / "behaviour.csv").open("ab") as f:
        f.write("e80,u1,café,naïve,2024-02-01\n".encode("latin-1"))
    results = intake(folder, encoding="utf-8")
    assert_accounted(results)
    bad = rejected(results, "behaviour").filter(pl.col("reason").str.contains("utf-8"))
    assert bad.height == 1 and bad["cohort"][0] == UNASSIGNED_COHORT
    assert "e80" in json.loads(bad["raw_row"][0])["csv_line"]


def test_utf8_file_with_one_gbk_line_reads_that_line_as_gbk(tmp_path: Path) -> None:
    """`auto` decides per file, but a line another tool appended in GBK is still read right."""
    folder = corpus.write_csv_folder(tmp_path / "source", malformed=False)
    with (folder / "behaviour.csv").open("ab") as f:
        f.write("e81,u1,浏览文章,热玛吉多少钱？,2024-02-01 10:00:00\r\n".encode("gbk"))
    rows = accepted(intake(folder), "behaviour")
    assert rows.filter(pl.col("event_id") == "e81")["target"].to_list() == ["热玛吉多少钱？"]


def test_source_encoding_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().source_encoding == "auto"
    monkeypatch.setenv("PROFILING_SOURCE_ENCODING", "GBK")
    assert Settings().source_encoding == "gbk"
    monkeypatch.setenv("PROFILING_SOURCE_ENCODING", "klingon")
    with pytest.raises(ValueError, match="unknown text encoding"):
        Settings()


# -- 5. dates and amounts as Chinese exports write them ----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024/5/5 10:00", datetime(2024, 5, 5, 10)),
        ("2024/05/05", datetime(2024, 5, 5)),
        ("2024年5月5日", datetime(2024, 5, 5)),
        ("2024年5月5日 10:00", datetime(2024, 5, 5, 10)),
        ("２０２４年５月５日 １０：００", datetime(2024, 5, 5, 10)),
        ("45417", datetime(2024, 5, 5)),
        ("45417.4166", datetime(2024, 5, 5, 9, 59, 54)),  # Excel's day fraction, to the second
        ("45417.416666666664", datetime(2024, 5, 5, 10)),
        ("2024-05-05T10:00:00", datetime(2024, 5, 5, 10)),
        ("2024-05-05 10:00:00.250", datetime(2024, 5, 5, 10)),
        ("2024.5.5", datetime(2024, 5, 5)),
        ("20240505", datetime(2024, 5, 5)),
    ],
)
def test_dates_as_chinese_exports_write_them(text: str, expected: datetime) -> None:
    event = {"event_id": "e1", "user_id": "u1", "event_type": "浏览", "target": "x"}
    result = validate_table("behaviour", text_frame([{**event, "event_time": text}]), "c", TODAY)
    assert result.rejected.height == 0, result.rejected["reason"].to_list()
    assert result.accepted["event_time"].to_list() == [expected]
    user = {"user_id": "u1", "signup_date": text}
    users = validate_table("users", text_frame([user]), "c", TODAY)
    assert users.accepted["signup_date"].to_list() == [expected.date()]


@pytest.mark.parametrize(
    "text", ["2024/13/5", "2024年2月30日", "4541", "454170", "昨天", "2024-05", "5/5/2024"]
)
def test_other_dates_are_rejected_with_a_chinese_reason(text: str) -> None:
    row = {"order_id": "o1", "user_id": "u1", "item": "x", "amount": "1", "order_date": text}
    result = validate_table("sales", text_frame([row]), "c", TODAY, known_user_ids={"u1"})
    assert result.rejected["reason"].to_list() == ["字段 order_date 无法解析为日期"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("¥12,800.00", 12800.0),
        ("￥12,800.00", 12800.0),
        ("12,800.00", 12800.0),
        ("¥7,800", 7800.0),
        ("7,800", 7800.0),  # a dealership's till: "219,900" is a car, not 219.9
        ("219,900", 219900.0),
        ("234,567.89", 234567.89),
        ("7800元", 7800.0),
        ("123,456.5 元", 123456.5),
        ("１２８００", 12800.0),
        ("￥１２，８００．５０", 12800.5),
        ("RMB 980", 980.0),
        (" 12.5 ", 12.5),
    ],
)
def test_amounts_as_chinese_exports_write_them(text: str, expected: float) -> None:
    row = {
        "order_id": "o1",
        "user_id": "u1",
        "item": "x",
        "amount": text,
        "order_date": "2024-01-01",
    }
    result = validate_table("sales", text_frame([row]), "c", TODAY, known_user_ids={"u1"})
    assert result.accepted["amount"].to_list() == [expected], result.rejected["reason"].to_list()


@pytest.mark.parametrize("text", ["12,80.00", "¥", "十二元", "1.2.3", "7,80", "12,8000", "$12"])
def test_other_amounts_are_rejected_with_a_chinese_reason(text: str) -> None:
    row = {
        "order_id": "o1",
        "user_id": "u1",
        "item": "x",
        "amount": text,
        "order_date": "2024-01-01",
    }
    result = validate_table("sales", text_frame([row]), "c", TODAY, known_user_ids={"u1"})
    assert result.accepted.height == 0
    assert result.rejected["reason"][0].startswith("字段 amount 无法解析为数字")


# -- 9. one data set, four ways of handing it over ---------------------------------------------

USERS = [
    {"user_id": "u1", "gender": "女", "age": "28", "city": "上海", "signup_date": "2024-01-05"},
    {"user_id": "u2", "gender": "男", "age": "35", "city": "杭州", "signup_date": "2024-02-10"},
    {"user_id": "u3", "gender": "女", "age": "", "city": "北京", "signup_date": "2024-01-20"},
    {"user_id": "u4", "gender": "女", "age": "41", "city": "广州", "signup_date": "不详"},
]
SALES = [
    {
        "order_id": "1001",
        "user_id": "u1",
        "item": "水光针",
        "category": "皮肤项目",
        "amount": "980.5",
        "order_date": "2024-02-01",
    },
    {
        "order_id": "1002",
        "user_id": "u2",
        "item": "热玛吉，全脸",
        "category": "皮肤项目",
        "amount": "12800",
        "order_date": "2024-02-03",
    },
    {
        "order_id": "1003",
        "user_id": "u3",
        "item": '光子嫩肤"M22"',
        "category": "",
        "amount": "abc",
        "order_date": "2024-02-05",
    },
]
BEHAVIOUR = [
    {
        "event_id": "e1",
        "user_id": "u1",
        "event_type": "浏览文章",
        "target": "热玛吉能维持多久？",
        "event_time": "2024-02-01 10:00:00",
    },
    {
        "event_id": "e2",
        "user_id": "u2",
        "event_type": "查看医生主页",
        "target": "第一行\n第二行，带逗号",
        "event_time": "2024-02-02 11:30:00",
    },
]
CHAT = [
    {
        "message_id": "m1",
        "user_id": "u1",
        "message": '她说"自然一点"，\n然后换了一行',
        "sent_at": "2024-02-01 10:05:00",
        "channel": "微信",
    },
    {
        "message_id": "m2",
        "user_id": "u3",
        "message": "光子嫩肤有恢复期吗？",
        "sent_at": "2024-02-05 09:00:00",
        "channel": "",
    },
]
DATA = {"users": USERS, "sales": SALES, "behaviour": BEHAVIOUR, "chat": CHAT}
# The company's own column names in the workbook, and the spec mapping that undoes them.
HEADERS = {"sales": {"order_date": "下单时间", "amount": "金额(元)", "user_id": "客户ID"}}
MAPPING = {"sales": {contract: company for contract, company in HEADERS["sales"].items()}}
DATE_COLUMNS = {"signup_date", "order_date", "event_time", "sent_at"}


def write_workbook(path: Path, per_table: bool = False) -> Path:
    """As a person exports from Excel: real date cells, numbers as numbers, the company's
    own headers; signup dates of two users as bare serial numbers in a text-typed column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    books: dict[str, xlsxwriter.Workbook] = {}

    def sheet(table: str) -> tuple[xlsxwriter.Workbook, Any]:
        if per_table:
            path.mkdir(parents=True, exist_ok=True)
            book = books.setdefault(table, xlsxwriter.Workbook(str(path / f"{table}.xlsx")))
            return book, book.add_worksheet("Sheet1")
        book = books.setdefault("", xlsxwriter.Workbook(str(path)))
        return book, book.add_worksheet("订单" if table == "sales" else table)

    for table, rows in DATA.items():
        book, ws = sheet(table)
        day = book.add_format({"num_format": "yyyy/m/d"})
        moment = book.add_format({"num_format": "yyyy/m/d h:mm:ss"})
        columns = list(rows[0])
        ws.write_row(0, 0, [HEADERS.get(table, {}).get(c, c) for c in columns])
        for r, row in enumerate(rows, start=1):
            for c, column in enumerate(columns):
                value = row[column]
                if value == "":
                    continue
                if column in DATE_COLUMNS and value[0].isdigit():
                    parsed = datetime.fromisoformat(value)
                    if column == "signup_date" and r <= 2:
                        serial = (parsed - datetime(1899, 12, 30)).days
                        ws.write_number(r, c, serial)  # a date column Excel lost the format of
                    else:
                        ws.write_datetime(r, c, parsed, day if len(value) == 10 else moment)
                elif column in ("amount", "age", "order_id") and value.replace(".", "").isdigit():
                    ws.write_number(r, c, float(value))
                else:
                    ws.write_string(r, c, value)
    for book in books.values():
        book.close()
    return path


def handed_over(folder: Path, way: str) -> Path:
    frames = {t: text_frame(rows) for t, rows in DATA.items()}
    if way == "xlsx_workbook":
        return write_workbook(folder / "导出.xlsx")
    if way == "xlsx_per_table":
        return write_workbook(folder, per_table=True)
    options: dict[str, dict[str, Any]] = {
        "clean_utf8": {},
        "excel_utf8_bom_crlf": {"bom": True, "eol": "\r\n"},
        "excel_gbk_crlf": {"encoding": "gbk", "eol": "\r\n"},
        "mixed_line_endings": {"eol": ["\r\n", "\r\n", "\n"]},
    }
    for table, frame in frames.items():
        write_csv(folder / f"{table}.csv", frame, **options[way])
    return folder


WAYS = [
    "excel_utf8_bom_crlf",
    "excel_gbk_crlf",
    "mixed_line_endings",
    "xlsx_workbook",
    "xlsx_per_table",
]


@pytest.mark.parametrize("way", WAYS)
def test_the_same_data_handed_over_any_way_gives_the_same_rows(tmp_path: Path, way: str) -> None:
    clean = intake(handed_over(tmp_path / "clean", "clean_utf8"), MAPPING)
    other = intake(handed_over(tmp_path / way, way), MAPPING)
    assert set(other) == set(clean) == {"2024-01", "2024-02", UNASSIGNED_COHORT}
    assert_accounted(other)
    for table in TABLES:
        assert_frame_equal(accepted(other, table), accepted(clean, table))
        reasons = sorted(rejected(other, table)["reason"].to_list())
        assert reasons == sorted(rejected(clean, table)["reason"].to_list()), table
    counts = {t: accepted(other, t).height for t in TABLES}
    assert counts == {"users": 3, "sales": 2, "behaviour": 2, "chat": 2}
    sales = accepted(other, "sales")
    assert sales["amount"].to_list() == [980.5, 12800.0]
    assert sales["order_id"].to_list() == ["1001", "1002"]  # not 1001.0 from an Excel number
    users = accepted(other, "users").sort("user_id")
    assert users["signup_date"].to_list() == [
        date(2024, 1, 5),
        date(2024, 2, 10),
        date(2024, 1, 20),
    ]


def test_excel_rows_carry_their_sheet_and_row_number(tmp_path: Path) -> None:
    book = write_workbook(tmp_path / "导出.xlsx")
    results = intake(book, MAPPING)
    bad = rejected(results, "sales")
    assert bad["source"].to_list() == ["导出.xlsx#订单"]
    assert bad["source_line"].to_list() == [4]  # header row 1, third order on row 4
    assert re.fullmatch(r"[0-9a-f]{64}", bad["source_sha256"][0])


def test_a_table_in_two_places_is_a_clear_error(tmp_path: Path) -> None:
    folder = handed_over(tmp_path / "source", "clean_utf8")
    write_workbook(folder / "导出.xlsx")  # holds sales (as 订单) and users again
    with pytest.raises(SourceContractError, match=r"is in more than one place \(.*导出\.xlsx#"):
        with open_source(folder):
            pass


# -- 4. column mapping --------------------------------------------------------------------------

COMPANY_SALES = {
    "订单号": ["o1"],
    "客户ID": ["u1"],
    "商品": ["水光针"],
    "金额(元)": ["¥980.00"],
    "下单时间": ["2024/2/1 10:00"],
    "amount": ["3"],  # the company's own "amount" (a quantity): the mapping says which is meant
}
COMPANY_MAPPING = {
    "sales": {
        "order_id": "订单号",
        "user_id": "客户ID",
        "item": "商品",
        "amount": "金额(元)",
        "order_date": "下单时间",
    }
}


def company_source(tmp_path: Path, kind: str, sales: dict[str, list[str]]) -> Path:
    frames = {t: text_frame(rows) for t, rows in DATA.items()} | {"sales": pl.DataFrame(sales)}
    if kind == "duckdb":
        path = tmp_path / "source.duckdb"
        with duckdb.connect(str(path)) as con:
            for name, frame in frames.items():
                con.register("incoming", frame.to_arrow())
                con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming')
                con.unregister("incoming")
        return path
    folder = tmp_path / kind
    folder.mkdir()
    for name, frame in frames.items():
        if kind == "parquet":
            frame.write_parquet(folder / f"{name}.parquet")
        elif kind == "csv":
            write_csv(folder / f"{name}.csv", frame, encoding="gb18030", eol="\r\n")
        else:
            frame.write_excel(folder / f"{name}.xlsx")
    return folder


@pytest.mark.parametrize("kind", ["duckdb", "parquet", "csv", "xlsx"])
def test_spec_columns_rename_the_company_columns_onto_the_contract(
    tmp_path: Path, kind: str
) -> None:
    source = company_source(tmp_path, kind, COMPANY_SALES)
    with open_source(source, COMPANY_MAPPING) as con:
        raw = read_cohort_table(con, "sales", "2024-01")
    assert {"order_id", "user_id", "item", "amount", "order_date"} <= set(raw.columns)
    assert "金额(元)" not in raw.columns
    sales = accepted(intake(source, COMPANY_MAPPING), "sales")
    assert sales.select("order_id", "user_id", "amount", "order_date").rows() == [
        ("o1", "u1", 980.0, date(2024, 2, 1))
    ]


@pytest.mark.parametrize("kind", ["duckdb", "parquet", "csv", "xlsx"])
def test_missing_required_columns_are_all_named_with_the_mapping_tried(
    tmp_path: Path, kind: str
) -> None:
    sales = {k: v for k, v in COMPANY_SALES.items() if k not in ("下单时间", "amount")}
    source = company_source(tmp_path, kind, sales | {"品名": ["x"]})
    columns = {"sales": {**COMPANY_MAPPING["sales"], "item": "商品名称"}}
    with open_source(source, columns) as con, pytest.raises(SourceContractError) as error:
        list_cohorts(con)
    message = str(error.value)
    assert "'sales' lacks required column(s) item, order_date" in message
    assert "amount" not in message.split("(has:")[0]  # 金额(元) mapped it
    assert "[columns.sales]" in message
    assert "item = '商品名称' (not in the source)" in message
    assert "order_date = '下单时间' (not in the source)" in message


def test_without_a_mapping_the_error_says_how_to_write_one(tmp_path: Path) -> None:
    source = company_source(tmp_path, "csv", COMPANY_SALES)
    with open_source(source) as con, pytest.raises(SourceContractError) as error:
        list_cohorts(con)
    assert "order_id, user_id, item, order_date" in str(error.value)
    assert '[columns.sales] order_id = "…"' in str(error.value)


# -- 6. personal data stays in the source --------------------------------------------------------

PII = {
    **corpus.PLANTED_PII,
    "phone_id": "13912345678",  # a customer id that is a phone number
}
NEEDLES = corpus.pii_needles(PII)  # what must never leave the source


def pii_source(folder: Path) -> Path:
    """Personal data in every table, in rows that are accepted and in rows that are rejected
    (by the validator, as orphans, and as malformed CSV lines)."""
    p = PII
    users = [
        {"user_id": "u1", "city": f"上海 {p['phone']}", "signup_date": "2024-01-05"},
        {"user_id": "u2", "city": f"北京 {p['id_card']}", "signup_date": "不详"},
        {"user_id": p["phone_id"], "city": f"杭州 {p['email']}", "signup_date": "2024-01-09"},
    ]
    sales = [
        {
            "order_id": "o1",
            "user_id": "u1",
            "item": f"水光针（预约人{p['email']}）",
            "amount": "980",
            "order_date": "2024-02-01",
        },
        {
            "order_id": "o2",
            "user_id": "u1",
            "item": f"分期 卡号{p['bank_card']}",
            "amount": "abc",
            "order_date": "2024-02-01",
        },
        {
            "order_id": "o3",
            "user_id": p["phone_id"],
            "item": "热玛吉",
            "amount": "12800",
            "order_date": "2024-02-03",
        },
    ]
    behaviour = [
        {
            "event_id": "e1",
            "user_id": "u1",
            "event_type": "浏览文章",
            "target": f"咨询热线 {p['phone_dashed']}",
            "event_time": "2024-02-01 10:00:00",
        },
        {
            "event_id": "e2",
            "user_id": "u1",
            "event_type": "浏览文章",
            "target": f"卡{p['bank_card_spaced']}",
            "event_time": "昨天",
        },
    ]
    chat = [
        {
            "message_id": "m1",
            "user_id": "u1",
            "message": f"我的手机是{p['phone']}，邮箱{p['email']}，水光针多少钱？",
            "sent_at": "2024-02-01 10:05:00",
        },
        {
            "message_id": "m2",
            "user_id": "u1",
            "message": f"身份证{p['id_card']}，银行卡{p['bank_card']}",
            "sent_at": "",
        },
        {
            "message_id": "m3",
            "user_id": "ghost",
            "message": f"打我电话{p['phone_plus86']}",
            "sent_at": "2024-02-02 10:00:00",
        },
    ]
    for table, rows in {
        "users": users,
        "sales": sales,
        "behaviour": behaviour,
        "chat": chat,
    }.items():
        write_csv(folder / f"{table}.csv", text_frame(rows), eol="\r\n")
    with (folder / "chat.csv").open("ab") as f:
        f.write(f'm9,u1,"电话"{p["phone"]},2024-02-01 10:00:00\n'.encode())  # malformed
    with (folder / "sales.csv").open("ab") as f:
        f.write(f"o9,u1,面膜,{p['id_card']},98,2024-02-01,多余\r\n".encode())  # too many fields
    return folder


def test_personal_data_never_leaves_the_source(tmp_path: Path) -> None:
    from profiling_assets.assets.documents import build_document_assets
    from profiling_assets.assets.raw import build_raw_assets
    from profiling_assets.pipeline import build_definitions

    source = pii_source(tmp_path / "source")
    settings = Settings(data_dir=tmp_path / "data", source=source)
    settings.data_dir.mkdir()
    spec = load_spec("clinic")
    with open_source(source) as con:
        cohorts = list_cohorts(con)
    assert cohorts == ["2024-01", UNASSIGNED_COHORT]
    instance = cohort_instance(cohorts)
    resources = build_definitions(settings, spec).resources
    logs: list[str] = []
    for cohort in cohorts:
        result = dg.materialize(
            [build_raw_assets(settings, spec), *build_document_assets(settings, spec)],
            partition_key=cohort,
            instance=instance,
            resources=resources,
        )
        assert result.success
        assert all(c.passed for c in result.get_asset_check_evaluations())
        logs += [str(entry) for entry in instance.all_logs(result.run_id)]
    for key in (*TABLES, "rejected_rows", "user_documents", "document_chunks"):
        found = instance.fetch_materializations(dg.AssetKey(key), limit=100).records
        assert found, key
        logs += [str(record.event_log_entry) for record in found]

    places: dict[str, str] = {"dagster_event_log": "\n".join(logs)}
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        for (table,) in con.execute("SHOW TABLES").fetchall():
            rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
            places[f"warehouse.{table}"] = json.dumps(rows, ensure_ascii=False, default=str)
        stored = con.sql("SELECT * FROM rejected_rows").pl()
        users = con.sql("SELECT user_id FROM users").pl()["user_id"].to_list()
        sales = con.sql("SELECT order_id, user_id FROM sales ORDER BY 1").fetchall()
    for path in sorted(settings.documents_dir.rglob("*")):
        if path.is_file():
            places[f"file.{path.relative_to(settings.data_dir)}"] = path.read_text("utf-8")
    assert {"warehouse.users", "warehouse.rejected_rows", "warehouse.user_documents"} <= set(places)
    assert any(name.startswith("file.documents") for name in places)
    found = sorted(
        (place, name)
        for place, text in places.items()
        for name, value in NEEDLES.items()
        if value in text
    )
    assert found == []
    everything = "".join(places.values())
    for tag in ("[手机号]", "[身份证号]", "[邮箱]", "[银行卡号]"):
        assert tag in everything

    # The phone number used as a customer id became one pseudonym, joined across tables.
    pseudonym = next(u for u in users if u.startswith("pii_"))
    assert ("o3", pseudonym) in sales
    # Every rejected row points at its line, and its SHA-256 is that line's original bytes.
    assert stored.height == 7 and stored["source_line"].null_count() == 0
    for row in stored.iter_rows(named=True):
        lines = EOL.split((source / row["source"]).read_bytes())
        original = lines[row["source_line"] - 1]
        assert row["source_sha256"] == hashlib.sha256(original).hexdigest(), row["reason"]
        assert row["source"] == f"{row['table_name']}.csv"


# -- 7. check-source ----------------------------------------------------------------------------


def test_check_source_prints_counts_cohorts_and_masked_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = pii_source(tmp_path / "source")
    assert main(["check-source", str(source)]) == 0
    out = capsys.readouterr().out
    assert "批次 / cohorts (2): 2024-01, unassigned" in out
    assert "sales（sales.csv，utf-8）：读取 4 行，接受 2，拒绝 2" in out
    assert "chat（chat.csv，utf-8）：读取 4 行，接受 1，拒绝 3" in out
    assert "字段 amount 无法解析为数字：1 行" in out
    assert "前几条被拒绝的记录（已脱敏）" in out and "users.csv 第 3 行" in out
    assert [name for name, value in NEEDLES.items() if value in out] == []
    assert "[身份证号]" in out


def test_check_source_applies_the_spec_mapping(tmp_path: Path, capsys) -> None:
    source = company_source(tmp_path, "csv", COMPANY_SALES)
    spec = tmp_path / "company.toml"
    mapping = "\n".join(f'{k} = "{v}"' for k, v in COMPANY_MAPPING["sales"].items())
    text = (SPECS_DIR / "clinic.toml").read_text("utf-8")
    spec.write_text(f"{text}\n[columns.sales]\n{mapping}\n", encoding="utf-8")
    assert main(["check-source", str(source), "--spec", str(spec)]) == 0
    assert "sales（sales.csv，gb18030）：读取 1 行，接受 1，拒绝 0" in capsys.readouterr().out
    assert main(["check-source", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks required column(s)" in err


def test_check_source_exit_2_with_one_sentence_when_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = corpus.write_csv_folder(tmp_path / "source", malformed=False)
    # Latin-1 accents at the end of a field: neither UTF-8 nor GB18030 (an accent followed by a
    # letter would pass as a rare GB18030 character: see core.csv_lines).
    latin = "message_id,user_id,message,sent_at\nm1,u1,café,x\nm2,u1,passé,x\nm3,u1,résumé,x\n"
    (folder / "chat.csv").write_bytes(latin.encode("latin-1"))
    assert main(["check-source", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "chat.csv" in captured.err
    assert main(["check-source", str(tmp_path / "missing")]) == 2


def test_inspect_source_reads_without_writing(tmp_path: Path) -> None:
    source = handed_over(tmp_path / "source", "excel_gbk_crlf")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    report = inspect_source(source, today=TODAY)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    by_table = {t.table: t for t in report.tables}
    assert by_table["sales"].detail == "gbk" or by_table["sales"].detail == "gb18030"
    assert (by_table["users"].num_read, by_table["users"].num_accepted) == (4, 3)
    assert all(t.num_read == t.num_accepted + t.num_rejected for t in report.tables)


def test_the_amount_ceiling_is_the_businesss_own(tmp_path: Path) -> None:
    """A ¥645,000 fleet order is a data error at a clinic and a sale at a car dealer: the
    spec's `[intake] max_amount` decides, and the reason names the setting."""
    row = {
        "order_id": "o1",
        "user_id": "u1",
        "item": "迈腾 ×3",
        "amount": "645,000",
        "order_date": "2024-01-01",
    }
    clinic = validate_table("sales", text_frame([row]), "c", TODAY, known_user_ids={"u1"})
    assert clinic.rejected["reason"].to_list() == [
        "金额超出合理范围（0–500000，见规格 [intake] max_amount）"
    ]
    text = (SPECS_DIR / "clinic.toml").read_text("utf-8") + "\n[intake]\nmax_amount = 5000000\n"
    (tmp_path / "dealer.toml").write_text(text, "utf-8")
    dealer = load_spec(tmp_path / "dealer.toml")
    assert dealer.part_hash("columns") != load_spec("clinic").part_hash("columns")
    sold = validate_table(
        "sales",
        text_frame([row]),
        "c",
        TODAY,
        known_user_ids={"u1"},
        max_amount=dealer.intake.max_amount,
    )
    assert sold.accepted["amount"].to_list() == [645000.0]
