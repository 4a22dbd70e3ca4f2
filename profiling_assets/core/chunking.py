"""Heading-aware chunks with the seed's 100–150-character overlap.

A document is packed line by line (list items are never split unless one item alone is
longer than a chunk). Every chunk starts with the headings of where it starts, so it reads on
its own. A chunk that breaks *inside* a `##` section carries the tail of the previous chunk
(`overlap` characters, snapped to an item start when that stays within the overlap window) so
the context passes over the cut; a new `##` section starts fresh, its heading being the context.
Ids hash the user and the text, so unchanged text keeps its id across re-runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from profiling_assets.core.documents import DocLine, UserDocument, documents_from_frame
from profiling_assets.core.records import Chunk

OVERLAP_SLACK_BELOW = 20  # overlap may shrink this much to start at an item boundary
OVERLAP_SLACK_ABOVE = 30  # ... or grow this much: 120 → 100–150 characters (seed rule)


@dataclass(frozen=True)
class ChunkingOptions:
    size: int = 420
    overlap: int = 120

    @property
    def overlap_window(self) -> tuple[int, int]:
        return self.overlap - OVERLAP_SLACK_BELOW, self.overlap + OVERLAP_SLACK_ABOVE


def chunk_id(user_id: str, text: str) -> str:
    return hashlib.sha256(f"{user_id}\n{text}".encode()).hexdigest()[:24]


def _heading_lines(line: DocLine) -> list[str]:
    heads = [f"## {line.section}"]
    if line.subsection:
        heads.append(f"### {line.subsection}")
    return heads


def _heading_path(line: DocLine) -> str:
    return " > ".join(p for p in (line.section, line.subsection) if p)


@dataclass
class _Piece:
    """A list item (or a slice of an over-long one) with the headings that open before it."""

    line: DocLine
    text: str  # "- ..." as it appears in the chunk body

    def __len__(self) -> int:
        return len(self.text) + 1


def _pieces(lines: list[DocLine], size: int) -> list[_Piece]:
    pieces: list[_Piece] = []
    room = max(size // 2, 60)
    for line in lines:
        body = f"- {line.text}"
        if len(body) <= room:
            pieces.append(_Piece(line, body))
            continue
        # An item longer than half a chunk is cut into consecutive slices marked （续）.
        first, rest = body[:room], body[room:]
        pieces.append(_Piece(line, first))
        while rest:
            pieces.append(_Piece(line, "  （续）" + rest[: room - 6]))
            rest = rest[room - 6 :]
    return pieces


@dataclass(frozen=True)
class _Rendered:
    """One line of a chunk's body as written: a piece, an inner heading or carried text."""

    line: DocLine  # where the text sits (carried text: where it starts)
    text: str
    piece: _Piece | None = None
    end: DocLine | None = None  # carried text: where it ends


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
        length += len(entry.text) + 1
        if length > high:
            break
        if entry.piece is not None and length >= low:
            return [e.piece for e in rendered[index:] if e.piece is not None], None
    text = "\n".join(e.text for e in rendered)
    tail = text[-options.overlap :]
    # The carried text sits under the headings of the line it starts in.
    offset, begins = len(text) - len(tail), rendered[0]
    for entry in rendered:
        if offset < len(entry.text) + 1:
            begins = entry
            break
        offset -= len(entry.text) + 1
    return [], _Rendered(begins.line, tail, end=rendered[-1].line)


def chunk_document(document: UserDocument, options: ChunkingOptions) -> list[Chunk]:
    chunks: list[Chunk] = []
    body: list[_Piece] = []
    carried: _Rendered | None = None  # character overlap when no item boundary fits the window
    rendered: list[_Rendered] = []  # the last flushed chunk's body, as written
    start: DocLine | None = None

    def flush() -> None:
        if not body or start is None:
            return
        heads = _heading_lines(start)
        rendered.clear()
        where = (start.section, start.subsection)
        if carried:
            rendered.append(carried)
            # the carried text may cross a heading: go on under the headings where it ends
            end = carried.end or carried.line
            where = (end.section, end.subsection)
        for piece in body:
            if (piece.line.section, piece.line.subsection) != where:
                if piece.line.section != where[0]:
                    rendered.append(_Rendered(piece.line, f"## {piece.line.section}"))
                if piece.line.subsection:
                    rendered.append(_Rendered(piece.line, f"### {piece.line.subsection}"))
                where = (piece.line.section, piece.line.subsection)
            rendered.append(_Rendered(piece.line, piece.text, piece))
        text = "\n".join([*heads, *(r.text for r in rendered)])
        ids = list(dict.fromkeys(p.line.source_id for p in body if p.line.source_id))
        chunks.append(
            Chunk(
                chunk_id=chunk_id(document.user_id, text),
                user_id=document.user_id,
                cohort=document.cohort,
                position=len(chunks),
                heading_path=_heading_path(start),
                text=text,
                source_ids=ids,
            )
        )

    for piece in _pieces(document.lines, options.size):
        new_section = not body or piece.line.section != body[-1].line.section
        used = sum(len(p) for p in body) + (len(carried.text) + 1 if carried else 0)
        full = used + len(piece) > options.size
        if body and (full or (new_section and used > options.size // 3)):
            flush()
            if new_section:
                body, carried = [], None
            else:
                body, carried = _overlap_tail(rendered, options)
            if body:
                start = body[0].line
            elif carried:
                start = carried.line
            else:
                start = piece.line
        if start is None or (not body and not carried):
            start = piece.line
        body.append(piece)
    flush()
    return chunks


CHUNK_SCHEMA = {
    "chunk_id": pl.String,
    "user_id": pl.String,
    "cohort": pl.String,
    "position": pl.Int64,
    "heading_path": pl.String,
    "text": pl.String,
    "source_ids": pl.List(pl.String),
}


def chunk_documents(documents: list[UserDocument], options: ChunkingOptions) -> pl.DataFrame:
    rows = [c.model_dump() for d in documents for c in chunk_document(d, options)]
    return pl.DataFrame(rows, schema=CHUNK_SCHEMA)


def chunk_documents_frame(
    documents: pl.DataFrame, options: ChunkingOptions, batch_users: int = 5_000
) -> pl.DataFrame:
    """Chunks of a documents frame (see `documents_frame`), a batch of users at a time."""
    frames = [pl.DataFrame(schema=CHUNK_SCHEMA)]
    for start in range(0, documents.height, batch_users):
        batch = documents_from_frame(documents.slice(start, batch_users))
        frames.append(chunk_documents(batch, options))
    return pl.concat(frames)
