"""Read a CSV file as companies hand it over, accounting for every physical line.

Exports come with CRLF, LF or mixed line endings (a line appended by another tool), with or
without a UTF-8 byte-order mark, or in GB18030/GBK (Excel on Chinese Windows). A bulk reader
gives up on the whole file at the first surprise; this one accounts for every physical line:
each is the header, part of exactly one record, or blank. A record is one line, or several
when a quoted field holds line breaks. A well-formed record becomes a row (short rows padded
with nulls, for the validator to judge); a malformed one (more fields than the header, text
after a closing quote, bytes not in the file's encoding) is kept with its reason, so the
caller rejects it and nothing else. Each record carries its first line number and the SHA-256
of its original bytes (its lines and the line breaks between them, without the final line
break), so a rejected row can be traced back to the file byte for byte.

Lines without a quote (most of a real export) are split on commas all at once by polars; only
a line with a quote goes through the csv module, which reads the record it opens and says how
many lines that record took. The dialect is fixed (comma, RFC 4180 double quotes): sniffing
would let one odd line change how every other line is read. A quote opens a quoted field only
at the start of a field; one inside an unquoted field is kept as text (`5"寸`), as
spreadsheets write it.
"""

from __future__ import annotations

import codecs
import csv
import gc
import hashlib
import re
from dataclasses import dataclass, field
from typing import AnyStr

import polars as pl

from profiling_assets.core.contract import LINE_COLUMN, SHA_COLUMN, SourceContractError

AUTO_ENCODING = "auto"
# Tried in order when the encoding is `auto`: strict UTF-8 (a BOM is dropped), then GB18030,
# the superset of GBK and GB2312 that Excel on Chinese Windows writes.
AUTO_CANDIDATES = ("utf-8", "gb18030")
MALFORMED_SCHEMA = {
    "line": pl.Int64,
    "csv_line": pl.String,
    "reason": pl.String,
    "source_sha256": pl.String,
}

_UNCLOSED = "unclosed"
_EOL_BYTES = re.compile(rb"(\r\n|\n|\r)")
_EOL_TEXT = re.compile(r"(\r\n|\n|\r)")
_BOMS_WE_REFUSE = (
    codecs.BOM_UTF32_LE,
    codecs.BOM_UTF32_BE,
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
)
# A chat export can hold one message longer than the csv module's default 128 KiB field
# limit; that is the validator's to cut (MAX_MESSAGE_CHARS), not a reason to reject the line.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))


_SPAN = "__span"


@dataclass
class CsvRead:
    """What one file held: rows (text, padded), malformed records, blank lines."""

    name: str
    encoding: str
    header: list[str]
    table: pl.DataFrame  # header columns (text), then __line, __span, __sha256; in file order
    malformed: list[tuple[int, int, str, str, str]] = field(default_factory=list)
    # (first line, lines taken, text with line breaks as "\n", reason, sha256)
    blank_lines: list[int] = field(default_factory=list)
    num_lines: int = 0  # physical lines after the header

    def frame(self) -> pl.DataFrame:
        """The rows as all-text columns, plus their first line number and SHA-256."""
        return self.table.drop(_SPAN)

    @property
    def row_lines(self) -> list[int]:
        return self.table[LINE_COLUMN].to_list()

    @property
    def row_spans(self) -> list[int]:
        return self.table[_SPAN].to_list()

    def malformed_frame(self) -> pl.DataFrame:
        rows = [(line, text, reason, sha) for line, _, text, reason, sha in self.malformed]
        return pl.DataFrame(rows, schema=MALFORMED_SCHEMA, orient="row")


def check_encoding(name: str) -> str:
    """`auto`, or a codec Python knows (its canonical name)."""
    if name.strip().lower() == AUTO_ENCODING:
        return AUTO_ENCODING
    try:
        return codecs.lookup(name.strip()).name
    except LookupError:
        raise ValueError(f"unknown text encoding {name!r} (use auto, utf-8, gb18030 …)") from None


def read_csv_bytes(data: bytes, name: str, encoding: str = AUTO_ENCODING) -> CsvRead:
    """Every physical line of `data` as header, row, malformed record or blank line.

    `SourceContractError` (naming the file and a line) when the file is in no encoding we can
    read, has no header, or a quote opened near the end is never closed (the lines after it
    cannot be told apart from the quoted text).
    """
    if data.startswith(_BOMS_WE_REFUSE):
        raise SourceContractError(
            f"{name}: UTF-16/UTF-32 text is not read; save it as CSV UTF-8 "
            "(文件是 UTF-16/32 编码：请另存为“CSV UTF-8”)"
        )
    raw_lines, breaks = _split_lines(data, b"\r", b"\n", _EOL_BYTES)
    if raw_lines and raw_lines[-1] == b"" and breaks:
        raw_lines.pop()  # the file ends with a line break: no empty last line
    texts, used, undecodable = _decode(raw_lines, data, name, encoding)
    if texts and texts[0].startswith("\ufeff"):
        texts[0] = texts[0][1:]
    if not texts or not texts[0].strip():
        raise SourceContractError(f"{name} has no header line")
    header_row, header_span, _ = _Records(texts).at(0)
    if header_row is None:
        raise SourceContractError(f"{name}: the header line is not well-formed CSV")
    header = header_names(header_row)
    out = CsvRead(name, used, header, pl.DataFrame())
    out.num_lines = len(raw_lines) - header_span
    # Millions of small objects: the cyclic collector would scan them over and over for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        quoted = _quoted_records(texts, header_span, out, name)
        plain = [i for i in range(header_span, len(texts)) if i not in quoted.owned]
        frames = [_plain_rows(texts, plain, header, out), quoted.frame(header)]
        if undecodable:
            frames = [_drop_undecodable(f, undecodable, used, texts, out) for f in frames]
        table = pl.concat(frames).sort(LINE_COLUMN)
        starts = (table[LINE_COLUMN] - 1).to_list()
        fingerprints = [hashlib.sha256(raw_lines[start]).hexdigest() for start in starts]
        for position in table.with_row_index().filter(pl.col(_SPAN) > 1)["index"].to_list():
            fingerprints[position] = _sha256(
                raw_lines, breaks, starts[position], table[_SPAN][position]
            )
        out.table = table.with_columns(pl.Series(SHA_COLUMN, fingerprints, pl.String))
        out.malformed = sorted(
            (line, span, text, reason, _sha256(raw_lines, breaks, line - 1, span))
            for line, span, text, reason, _ in out.malformed
        )
        out.blank_lines.sort()
    finally:
        if collecting:
            gc.enable()
    return out


@dataclass
class _Quoted:
    """Records that start on a line with a quote, parsed by the csv module."""

    owned: set[int] = field(default_factory=set)  # every line these records take
    rows: list[tuple[int, int, list[str]]] = field(default_factory=list)  # start, span, fields

    def frame(self, header: list[str]) -> pl.DataFrame:
        width = len(header)
        padded = [
            row if len(row) == width else row + [""] * (width - len(row)) for *_, row in self.rows
        ]
        columns = list(zip(*padded, strict=True)) if padded else [()] * width
        frame = pl.DataFrame(
            [
                pl.Series(name, values, pl.String).replace("", None)
                for name, values in zip(header, columns, strict=True)
            ]
        )
        return frame.with_columns(
            pl.Series(LINE_COLUMN, [start + 1 for start, _, _ in self.rows], pl.Int64),
            pl.Series(_SPAN, [span for _, span, _ in self.rows], pl.Int64),
        )


def _quoted_records(texts: list[str], first: int, out: CsvRead, name: str) -> _Quoted:
    """Only a line with a quote can open a record of several lines or be malformed by its
    quoting: the csv module reads those records (and the lines they take); the rest is plain."""
    quoted = _Quoted()
    records = _Records(texts)
    width = len(out.header)
    for index in [i for i in range(first, len(texts)) if '"' in texts[i]]:
        if index in quoted.owned:
            continue
        row, span, error = records.at(index)
        if error is _UNCLOSED:
            raise SourceContractError(
                f"{name}: {out.num_lines} data lines, but only {index - first} were read or "
                f"rejected; the quote opened on line {index + 1} is never closed, which hides "
                "the lines after it — fix the quoting and run again"
            )
        quoted.owned.update(range(index, index + span))
        if row is not None and len(row) > width:
            error = _too_many(len(row), width)
        if error:
            text = "\n".join(texts[index : index + span])
            out.malformed.append((index + 1, span, text, error, ""))
        elif not "".join(row or []).strip():
            out.blank_lines.extend(range(index + 1, index + span + 1))
        else:
            quoted.rows.append((index, span, row or []))
    return quoted


def _plain_rows(
    texts: list[str], lines: list[int], header: list[str], out: CsvRead
) -> pl.DataFrame:
    """Lines without a quote, outside any quoted record: split on commas, all at once."""
    width = len(header)
    frame = pl.DataFrame(
        {
            LINE_COLUMN: pl.Series([i + 1 for i in lines], dtype=pl.Int64),
            "__text": pl.Series([texts[i] for i in lines], dtype=pl.String),
        }
    )
    flagged = frame.with_columns(
        pl.col("__text").str.split(",").alias("__fields"),
        (pl.col("__text").str.count_matches(",", literal=True) + 1).alias("__count"),
        (pl.col("__text").str.replace_all(",", "", literal=True).str.strip_chars() == "").alias(
            "__blank"
        ),
    )
    out.blank_lines.extend(flagged.filter(pl.col("__blank"))[LINE_COLUMN].to_list())
    wide = flagged.filter(~pl.col("__blank") & (pl.col("__count") > width))
    for line, text, n in wide.select(LINE_COLUMN, "__text", "__count").iter_rows():
        out.malformed.append((line, 1, text, _too_many(n, width), ""))
    rows = flagged.filter(~pl.col("__blank") & (pl.col("__count") <= width))
    fields = pl.col("__fields")
    return rows.select(
        *(
            fields.list.get(k, null_on_oob=True).replace("", None).alias(column)
            for k, column in enumerate(header)
        ),
        pl.col(LINE_COLUMN),
        pl.lit(1, pl.Int64).alias(_SPAN),
    )


def _drop_undecodable(
    frame: pl.DataFrame, undecodable: set[int], used: str, texts: list[str], out: CsvRead
) -> pl.DataFrame:
    """Rows with a line not in the file's encoding become malformed records (set by hand)."""
    bad_lines = {i + 1 for i in undecodable}
    keep = []
    for line, span in frame.select(LINE_COLUMN, _SPAN).iter_rows():
        hits = [k for k in range(line, line + span) if k in bad_lines]
        keep.append(not hits)
        if hits:
            text = "\n".join(texts[line - 1 : line - 1 + span])
            reason = f"第 {hits[0]} 行含有不是 {used} 编码的字节"
            out.malformed.append((line, span, text, reason, ""))
    return frame.filter(pl.Series(keep, dtype=pl.Boolean))


def _split_lines(
    data: AnyStr, cr: AnyStr, lf: AnyStr, pattern: re.Pattern[AnyStr]
) -> tuple[list[AnyStr], list[AnyStr]]:
    """(lines, the line break after each): one C-speed split when the file keeps to one kind
    of line break, the regular expression when it mixes them."""
    crs, lfs = data.count(cr), data.count(lf)
    if crs == 0 or lfs == 0:
        sep = lf if crs == 0 else cr
        lines = data.split(sep)
        return lines, [sep] * (len(lines) - 1)
    if crs == lfs == data.count(cr + lf):
        lines = data.split(cr + lf)
        return lines, [cr + lf] * (len(lines) - 1)
    parts = pattern.split(data)
    return parts[0::2], parts[1::2]


def _too_many(count: int, width: int) -> str:
    return f"字段数 {count} 多于表头的 {width} 列（可能是未加引号的逗号）"


class _Records:
    """The record that starts at a given line: one csv reader over a movable line cursor, so
    `at()` costs no new reader; the reader starts each record afresh (and goes on after a
    malformed one), and the cursor says how many physical lines the record took."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts
        self._next = 0
        self._reader = csv.reader(self, delimiter=",", quotechar='"', strict=True)

    def __iter__(self) -> _Records:
        return self

    def __next__(self) -> str:
        if self._next >= len(self._texts):
            raise StopIteration
        self._next += 1
        return self._texts[self._next - 1] + "\n"

    def at(self, start: int) -> tuple[list[str] | None, int, str]:
        """(fields or None, lines taken, error); `_UNCLOSED`: the file ended inside quotes."""
        self._next = start
        try:
            row, error = next(self._reader), ""
        except StopIteration:
            return None, 1, ""
        except csv.Error as exc:
            if self._next >= len(self._texts) and "unexpected end of data" in str(exc):
                return None, self._next - start, _UNCLOSED
            row, error = None, "引号闭合后紧跟了其他字符（应为逗号或行尾）"
        return row, self._next - start, error


def _decode(
    raw_lines: list[bytes], data: bytes, name: str, encoding: str
) -> tuple[list[str], str, set[int]]:
    """(line texts, encoding used, indexes of the lines that decode in none we tried).

    An encoding set by hand is the only one tried. `auto` takes UTF-8 when the whole file is
    UTF-8; otherwise the encoding most of its non-ASCII lines are in (UTF-8, or GB18030 for a
    GBK export) comes first for every line and the other second, so a line appended by another
    tool in the other encoding is still read right. Lines in neither are rejected one by one;
    a file where they are the majority (Latin-1, Shift-JIS, a binary file) is refused, naming
    the first such line. GB18030 leaves few byte pairs invalid, so Latin-1 text whose accents
    precede a letter (`crème`) can pass for rare Chinese characters: refusing those would also
    refuse real GBK files with rare name characters, so they are read (and look garbled).
    """
    if encoding == AUTO_ENCODING:
        texts = _whole(data, "utf-8", len(raw_lines))
        if texts is not None:
            return texts, "utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8", set()
        non_ascii = [i for i, line in enumerate(raw_lines) if not line.isascii()]
        in_utf8 = sum(1 for i in non_ascii if _decodes(raw_lines[i], "utf-8"))
        order = AUTO_CANDIDATES if in_utf8 * 2 >= len(non_ascii) else AUTO_CANDIDATES[::-1]
    else:
        texts = _whole(data, encoding, len(raw_lines))
        if texts is not None:
            return texts, encoding, set()
        non_ascii = [i for i, line in enumerate(raw_lines) if not line.isascii()]
        order = (encoding,)
    texts = [line.decode("ascii") if line.isascii() else "" for line in raw_lines]
    bad: set[int] = set()
    second = 0
    for index in non_ascii:
        for rank, candidate in enumerate(order):
            if _decodes(raw_lines[index], candidate):
                texts[index] = raw_lines[index].decode(candidate)
                second += rank
                break
        else:
            texts[index] = raw_lines[index].decode(order[0], errors="replace")
            bad.add(index)
    if 0 in bad or (encoding == AUTO_ENCODING and len(bad) * 2 > len(non_ascii)):
        first = min(bad) + 1
        tried = " or ".join(c.upper() for c in order)
        raise SourceContractError(
            f"{name}: not in an encoding we can read (line {first} is not {tried}) — save "
            "it as CSV UTF-8, or set PROFILING_SOURCE_ENCODING to read it anyway, rejecting the "
            "lines that do not decode（文件编码无法识别：请另存为 UTF-8，或用 "
            "PROFILING_SOURCE_ENCODING 指定编码）"
        )
    used = order[0] if not second else f"{order[0]}+{order[1]}"
    return texts, used, bad


def _whole(data: bytes, encoding: str, num_lines: int) -> list[str] | None:
    """The line texts when all of `data` decodes (line breaks never sit inside a multi-byte
    character of UTF-8 or GB18030, so the lines are the same as the byte lines)."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        return None
    texts, _ = _split_lines(text, "\r", "\n", _EOL_TEXT)
    if len(texts) == num_lines + 1 and texts[-1] == "":
        texts.pop()
    return texts if len(texts) == num_lines else None


def _decodes(line: bytes, encoding: str) -> bool:
    try:
        line.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def header_names(row: list[str]) -> list[str]:
    """Header cells stripped; empty ones named by position, repeats numbered (first wins)."""
    names: list[str] = []
    for position, cell in enumerate(row, start=1):
        name = cell.strip().lstrip("\ufeff") or f"column_{position}"
        candidate, n = name, 2
        while candidate in names:
            candidate, n = f"{name}_{n}", n + 1
        names.append(candidate)
    return names


def _sha256(raw_lines: list[bytes], breaks: list[bytes], start: int, span: int) -> str:
    if span == 1:
        return hashlib.sha256(raw_lines[start]).hexdigest()
    pieces = [raw_lines[start]]
    for k in range(start + 1, start + span):
        pieces += [breaks[k - 1], raw_lines[k]]
    return hashlib.sha256(b"".join(pieces)).hexdigest()
