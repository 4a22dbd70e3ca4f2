"""Heading-aware chunks; consecutive chunks of a section share 100–150 characters, so a
sentence or record cut at a chunk border is whole in one of them.

A document is packed line by line (list items are never split unless one item alone is
longer than a chunk). Every chunk starts with the headings of where it starts, so it reads on
its own. A chunk that breaks *inside* a `##` section carries the tail of the previous chunk
(`overlap` characters, snapped to an item start when that stays within the overlap window) so
the context passes over the cut; a new `##` section starts fresh, its heading being the context.
Ids hash the user and the text, so unchanged text keeps its id across re-runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from profiling_assets.core.documents import DocLine, UserDocument
from profiling_assets.core.records import Chunk

OVERLAP_SLACK_BELOW = 20  # overlap may shrink this much to start at an item boundary
OVERLAP_SLACK_ABOVE = 30  # ... or grow this much: 120 → the 100–150 characters of overlap
# Users chunked per batch: one batch's lines are Python tuples at once.
CHUNK_BATCH_USERS = 5_000
LINE_FIELDS = ("section", "subsection", "text")


@dataclass(frozen=True)
class ChunkingOptions:
    size: int = 420
    overlap: int = 120

    @property
    def overlap_window(self) -> tuple[int, int]:
        return self.overlap - OVERLAP_SLACK_BELOW, self.overlap + OVERLAP_SLACK_ABOVE


def chunk_id(user_id: str, text: str) -> str:
    return hashlib.sha256(f"{user_id}\n{text}".encode()).hexdigest()[:24]


# One document line as the chunker reads it: (section, subsection, text). Plain tuples, not
# `DocLine`s: a cohort has millions of lines and object creation was most of the time spent
# chunking. Source ids are not needed here: a chunk's body is a run of consecutive lines.
Line = tuple[str, str | None, str]
# A list item (or a slice of an over-long one): its line, "- ..." as it appears in the chunk
# body, its length with the joining newline, and the line's index.
_Piece = tuple[Line, str, int, int]
# One line of a chunk's body as written: where it sits (carried text: where it starts), the
# text, the piece it shows (None for an inner heading or carried text) and, for carried text,
# the line where it ends.
_Rendered = tuple[Line, str, _Piece | None, Line | None]
# (chunk_id, position, heading_path, text, first line, last line): the chunk's source ids are
# those of lines first..last (the caller holds them).
ChunkRow = tuple[str, int, str, str, int, int]


def _heading_lines(line: Line) -> list[str]:
    heads = [f"## {line[0]}"]
    if line[1]:
        heads.append(f"### {line[1]}")
    return heads


def _heading_path(line: Line) -> str:
    return " > ".join(p for p in (line[0], line[1]) if p)


def _pieces(lines: Sequence[Line], size: int) -> list[_Piece]:
    pieces: list[_Piece] = []
    room = max(size // 2, 60)
    for index, line in enumerate(lines):
        body = "- " + line[2]
        if len(body) <= room:
            pieces.append((line, body, len(body) + 1, index))
            continue
        # An item longer than half a chunk is cut into consecutive slices marked （续）.
        first, rest = body[:room], body[room:]
        pieces.append((line, first, len(first) + 1, index))
        while rest:
            part = "  （续）" + rest[: room - 6]
            pieces.append((line, part, len(part) + 1, index))
            rest = rest[room - 6 :]
    return pieces


def _overlap_tail(
    rendered: list[_Rendered], options: ChunkingOptions
) -> tuple[list[_Piece], _Rendered | None]:
    """What the next chunk repeats of this one's body: whole trailing items (with the headings
    between them) when their text fits the window, else the last `overlap` characters.

    Lengths are those of the repeated text itself, newlines and inner headings included, so
    the overlap the next chunk shows is what the window says.
    """
    low, high = options.overlap_window
    length = -1  # n lines joined by n - 1 newlines
    for index in range(len(rendered) - 1, -1, -1):
        entry = rendered[index]
        length += len(entry[1]) + 1
        if length > high:
            break
        if entry[2] is not None and length >= low:
            return [e[2] for e in rendered[index:] if e[2] is not None], None
    text = "\n".join(e[1] for e in rendered)
    tail = text[-options.overlap :]
    # The carried text sits under the headings of the line it starts in.
    offset, begins = len(text) - len(tail), rendered[0]
    for entry in rendered:
        if offset < len(entry[1]) + 1:
            begins = entry
            break
        offset -= len(entry[1]) + 1
    return [], (begins[0], tail, None, rendered[-1][0])


def _render_body(body: list[_Piece], carried: _Rendered | None, start: Line) -> list[_Rendered]:
    """The chunk body as written: carried text, then the pieces with the headings that open
    between them."""
    rendered: list[_Rendered] = []
    where = (start[0], start[1])
    if carried:
        rendered.append(carried)
        # the carried text may cross a heading: go on under the headings where it ends
        end = carried[3] or carried[0]
        where = (end[0], end[1])
    for piece in body:
        line = piece[0]
        if (line[0], line[1]) != where:
            if line[0] != where[0]:
                rendered.append((line, f"## {line[0]}", None, None))
            if line[1]:
                rendered.append((line, f"### {line[1]}", None, None))
            where = (line[0], line[1])
        rendered.append((line, piece[1], piece, None))
    return rendered


def chunk_lines(user_id: str, lines: Sequence[Line], options: ChunkingOptions) -> list[ChunkRow]:
    """The chunks of one user's document lines (see the module doc)."""
    size, third = options.size, options.size // 3
    chunks: list[ChunkRow] = []
    body: list[_Piece] = []
    carried: _Rendered | None = None  # character overlap when no item boundary fits the window
    rendered: list[_Rendered] = []  # the last flushed chunk's body, as written
    start: Line | None = None
    used = 0  # characters of body and carried text, kept as pieces come and go

    def flush() -> None:
        nonlocal rendered
        if not body or start is None:
            return
        rendered = _render_body(body, carried, start)
        text = "\n".join([*_heading_lines(start), *(r[1] for r in rendered)])
        key = chunk_id(user_id, text)
        chunks.append((key, len(chunks), _heading_path(start), text, body[0][3], body[-1][3]))

    for piece in _pieces(lines, size):
        line = piece[0]
        new_section = not body or line[0] != body[-1][0][0]
        if body and (used + piece[2] > size or (new_section and used > third)):
            flush()
            if new_section:
                body, carried = [], None
            else:
                body, carried = _overlap_tail(rendered, options)
            used = sum(p[2] for p in body) + (len(carried[1]) + 1 if carried else 0)
            if body:
                start = body[0][0]
            elif carried:
                start = carried[0]
            else:
                start = line
        if start is None or (not body and not carried):
            start = line
        body.append(piece)
        used += piece[2]
    flush()
    return chunks


def _as_line(line: DocLine) -> Line:
    return (line.section, line.subsection, line.text)


def chunk_document(document: UserDocument, options: ChunkingOptions) -> list[Chunk]:
    lines = document.lines
    rows = chunk_lines(document.user_id, [_as_line(x) for x in lines], options)
    return [
        Chunk(
            chunk_id=key,
            user_id=document.user_id,
            cohort=document.cohort,
            position=position,
            heading_path=path,
            text=text,
            source_ids=list(dict.fromkeys(x.source_id for x in lines[lo : hi + 1] if x.source_id)),
        )
        for key, position, path, text, lo, hi in rows
    ]


CHUNK_SCHEMA = {
    "chunk_id": pl.String,
    "user_id": pl.String,
    "cohort": pl.String,
    "position": pl.Int64,
    "heading_path": pl.String,
    "text": pl.String,
    "source_ids": pl.List(pl.String),
}


def _chunk_frame(
    users: Sequence[tuple[str, str, Sequence[Line]]],
    source_ids: pl.Series,
    options: ChunkingOptions,
) -> pl.DataFrame:
    """(user_id, cohort, lines) per user, with the source id of every line in the same
    order → the chunk frame, built column by column."""
    rows: list[ChunkRow] = []
    owners: list[str] = []
    cohorts: list[str] = []
    offset = 0  # each user's first line in `source_ids`
    for user_id, cohort, lines in users:
        chunks = chunk_lines(user_id, lines, options)
        rows += [(*c[:4], c[4] + offset, c[5] + offset) for c in chunks]
        owners += [user_id] * len(chunks)
        cohorts += [cohort] * len(chunks)
        offset += len(lines)
    keys, positions, paths, texts, first, last = (
        (list(c) for c in zip(*rows, strict=True)) if rows else ([] for _ in range(6))
    )
    frame = pl.DataFrame(
        {
            "chunk_id": keys,
            "user_id": owners,
            "cohort": cohorts,
            "position": positions,
            "heading_path": paths,
            "text": texts,
        },
        schema={k: v for k, v in CHUNK_SCHEMA.items() if k != "source_ids"},
    )
    return frame.with_columns(_source_ids(source_ids, first, last)).select(list(CHUNK_SCHEMA))


def _source_ids(ids: pl.Series, first: list[int], last: list[int]) -> pl.Series:
    """Per chunk, the distinct non-empty ids of lines first..last in order (as
    `chunk_document` reads them), computed in polars rather than as Python lists."""
    spans = pl.DataFrame({"lo": first, "hi": last}, schema={"lo": pl.Int64, "hi": pl.Int64})
    line = pl.int_ranges("lo", pl.col("hi") + 1).alias("line")
    exploded = spans.with_row_index("chunk").select("chunk", line).explode("line")
    exploded = exploded.with_columns(ids.cast(pl.String).gather(exploded["line"]).alias("id"))
    kept = pl.col("id").filter(pl.col("id") != "").unique(maintain_order=True)
    grouped = exploded.group_by("chunk", maintain_order=True).agg(kept.alias("source_ids"))
    return grouped["source_ids"].cast(CHUNK_SCHEMA["source_ids"])


def chunk_documents(documents: list[UserDocument], options: ChunkingOptions) -> pl.DataFrame:
    users = [(d.user_id, d.cohort, [_as_line(x) for x in d.lines]) for d in documents]
    ids = pl.Series([x.source_id for d in documents for x in d.lines], dtype=pl.String)
    return _chunk_frame(users, ids, options)


def _frame_users(documents: pl.DataFrame) -> tuple[list[tuple[str, str, list[Line]]], pl.Series]:
    """A documents frame's users with their lines as tuples, read column-wise (one Python
    list per field, then sliced per user) rather than row by row; and every line's source
    id, in the same order."""
    counts = documents["lines"].list.len().fill_null(0).to_list()
    # An empty list would explode into one null line: leave those documents out of the flat
    # list (their count of 0 slices nothing from it).
    flat = documents.filter(pl.col("lines").list.len() > 0).select(pl.col("lines").explode())
    flat = flat.unnest("lines")
    fields = list(zip(*(flat[c].to_list() for c in LINE_FIELDS), strict=True))
    users, offset = [], 0
    for user_id, cohort, n in zip(documents["user_id"], documents["cohort"], counts, strict=True):
        users.append((user_id, cohort, fields[offset : offset + n]))
        offset += n
    return users, flat["source_id"]


def chunk_documents_frame(
    documents: pl.DataFrame, options: ChunkingOptions, batch_users: int = CHUNK_BATCH_USERS
) -> pl.DataFrame:
    """Chunks of a documents frame (see `documents_frame`), a batch of users at a time."""
    frames = [pl.DataFrame(schema=CHUNK_SCHEMA)]
    for start in range(0, documents.height, batch_users):
        batch = documents.slice(start, batch_users)
        users, source_ids = _frame_users(batch)
        frames.append(_chunk_frame(users, source_ids, options))
    return pl.concat(frames)
