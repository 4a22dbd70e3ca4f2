"""Heading-aware overlap chunks: consecutive chunks share 100–150 characters, ids are stable,
every character is covered."""

from __future__ import annotations

import itertools
import random
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from profiling_assets.core.chunking import (
    CHUNK_SCHEMA,
    ChunkingOptions,
    chunk_document,
    chunk_documents,
    chunk_id,
)
from profiling_assets.core.documents import UserDocument, render_user_document
from profiling_assets.core.lint import lint_document
from profiling_assets.core.records import Chunk

WORDS = (
    "双眼皮 祛眼袋 皮肤管理 水光针 热玛吉 玻尿酸 恢复期 医生 价格 方案 自然 肿胀 预约 复诊 "
    "朋友推荐 朋友圈 活动 优惠 术后 护理 担心 疼痛 效果 案例 面诊 咨询 北京 上海 周末 下班"
).split()


def phrase(rng: random.Random, length: int) -> str:
    """Non-repeating Chinese text of about `length` characters (repetition would fake overlap)."""
    out = ""
    while len(out) < length:
        out += rng.choice(WORDS) + rng.choice("，。、") + str(rng.randint(0, 999))
    return out[:length]


def make_user(user_id: str, seed: int, n_orders: int = 20, n_events: int = 20, n_chat: int = 20):
    """A user's rows: items of mixed lengths, some longer than half a chunk."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1)
    user = {
        "user_id": user_id,
        "cohort": "2024-01",
        "gender": "女",
        "age": 30,
        "city": "上海",
        "signup_date": date(2024, 1, 1),
    }
    orders = [
        {
            "order_id": f"{user_id}-o{i:03d}",
            "item": phrase(rng, rng.choice([4, 12, 40, 90, 150])),
            "category": rng.choice(["医美项目", "皮肤项目", None]),
            "amount": float(rng.randint(50, 9000)),
            "order_date": (start + timedelta(days=i)).date(),
        }
        for i in range(n_orders)
    ]
    events = [
        {
            "event_id": f"{user_id}-e{i:03d}",
            "event_type": rng.choice(["浏览文章", "浏览视频", "查看医生主页"]),
            "target": phrase(rng, rng.choice([6, 20, 60, 130])),
            "event_time": start + timedelta(hours=i),
        }
        for i in range(n_events)
    ]
    messages = [
        {
            "message_id": f"{user_id}-m{i:03d}",
            "message": phrase(rng, rng.choice([5, 30, 80, 120, 200, 330, 700])),
            "sent_at": start + timedelta(hours=i),
            "channel": rng.choice(["微信", None]),
        }
        for i in range(n_chat)
    ]
    return user, orders, events, messages


def make_document(user_id: str = "u1", seed: int = 1, **counts: int) -> UserDocument:
    return render_user_document(*make_user(user_id, seed, **counts))


def split_heading(text: str) -> tuple[list[str], str]:
    """The chunk's leading heading lines, and its body after them."""
    lines = text.split("\n")
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    return lines[:n], "\n".join(lines[n:])


def repeated(before: str, after: str) -> int:
    """Longest suffix of `before` that is a prefix of `after`."""
    for n in range(min(len(before), len(after)), 0, -1):
        if before.endswith(after[:n]):
            return n
    return 0


def last_section(text: str) -> str:
    return [line for line in text.split("\n") if line.startswith("## ")][-1]


def same_section_pairs(chunks: list[Chunk]) -> list[tuple[Chunk, Chunk]]:
    """Consecutive chunks cut inside one `##` section (the next one goes on where it broke)."""
    return [
        (a, b)
        for a, b in itertools.pairwise(chunks)
        if split_heading(b.text)[0][0] == last_section(a.text)
    ]


DOCUMENTS = [make_document(f"u{seed}", seed) for seed in range(40)]
DEFAULT = ChunkingOptions()


def test_default_options_follow_the_seed() -> None:
    assert DEFAULT.overlap_window == (100, 150)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.user_id)
def test_overlap_within_a_section_is_100_to_150_characters(document: UserDocument) -> None:
    chunks = chunk_document(document, DEFAULT)
    pairs = same_section_pairs(chunks)
    assert pairs, "the fixture should cut inside sections"
    for a, b in pairs:
        n = repeated(split_heading(a.text)[1], split_heading(b.text)[1])
        assert 100 <= n <= 150, (n, a.text, b.text)


@pytest.mark.parametrize("document", DOCUMENTS[:10], ids=lambda d: d.user_id)
def test_overlap_sits_under_the_right_headings(document: UserDocument) -> None:
    """The repeated text is placed under the same `##`/`###` as in the chunk it comes from."""
    for a, b in same_section_pairs(chunk_document(document, DEFAULT)):
        heads, body = split_heading(b.text)
        n = repeated(split_heading(a.text)[1], body)
        before = a.text[: len(a.text) - n]
        subsections = [line for line in before.split("\n") if line.startswith("### ")]
        if subsections and len(heads) == 2 and last_section(before) == heads[0]:
            assert heads[1] == subsections[-1], (a.text, b.text)


def test_a_new_section_starts_fresh() -> None:
    chunks = chunk_document(DOCUMENTS[0], DEFAULT)
    sections = [split_heading(c.text)[0][0] for c in chunks]
    for a, b in itertools.pairwise(chunks):
        heads, body = split_heading(b.text)
        if heads[0] != last_section(a.text):
            assert body.startswith("- "), b.text
            assert repeated(split_heading(a.text)[1], body) < 20
    assert sections[0] == "## 基础信息"
    assert sections[-1] == "## 用户发言"


@pytest.mark.parametrize("document", DOCUMENTS[:10], ids=lambda d: d.user_id)
def test_every_chunk_starts_with_its_headings(document: UserDocument) -> None:
    for chunk in chunk_document(document, DEFAULT):
        heads, body = split_heading(chunk.text)
        assert heads, chunk.text
        assert heads[0].startswith("## ")
        assert all(h.startswith("### ") for h in heads[1:])
        assert len(heads) <= 2
        assert body.strip()
        section = heads[0].removeprefix("## ")
        assert chunk.heading_path.split(" > ")[0] == section
        if len(heads) == 2:
            assert chunk.heading_path == f"{section} > {heads[1].removeprefix('### ')}"


def test_chunks_without_cut_items_pass_the_document_lint() -> None:
    document = make_document("u1", 3, n_orders=6, n_events=6, n_chat=6)
    document.lines[:] = [line for line in document.lines if len(line.text) < 60]
    for chunk in chunk_document(document, DEFAULT):
        if "（续）" not in chunk.text and chunk.position == 0:
            assert lint_document(chunk.text) == []


@pytest.mark.parametrize(
    "options",
    [DEFAULT, ChunkingOptions(size=300, overlap=120), ChunkingOptions(size=800, overlap=140)],
    ids=str,
)
@pytest.mark.parametrize("document", DOCUMENTS[:10], ids=lambda d: d.user_id)
def test_no_body_exceeds_size_by_more_than_one_item(
    document: UserDocument, options: ChunkingOptions
) -> None:
    for chunk in chunk_document(document, options):
        items = [line for line in chunk.text.split("\n") if not line.startswith("#")]
        longest = max(len(line) for line in items)
        assert len("\n".join(items)) <= options.size + longest + 1, chunk.text


@pytest.mark.parametrize("document", DOCUMENTS[:10], ids=lambda d: d.user_id)
def test_every_source_id_is_in_some_chunk(document: UserDocument) -> None:
    chunks = chunk_document(document, DEFAULT)
    in_chunks = {source_id for chunk in chunks for source_id in chunk.source_ids}
    assert {line.source_id for line in document.lines} <= in_chunks
    assert in_chunks <= {line.source_id for line in document.lines}
    # and each source line's text appears in the chunk that claims it (whole or in slices)
    for chunk in chunks:
        for source_id in chunk.source_ids:
            line = next(x for x in document.lines if x.source_id == source_id)
            # Whole, or its head, or a continuation slice (`  （续）…`) cut from THIS line:
            # a chunk merely holding some other line's slice does not count.
            slices = [
                piece.removeprefix("  （续）")
                for piece in chunk.text.split("\n")
                if piece.startswith("  （续）")
            ]
            assert line.text[:20] in chunk.text or any(
                piece and piece in line.text for piece in slices
            ), (source_id, chunk.text)


def test_positions_and_metadata() -> None:
    chunks = chunk_document(DOCUMENTS[1], DEFAULT)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert {c.user_id for c in chunks} == {"u1"}
    assert {c.cohort for c in chunks} == {"2024-01"}
    assert all(c.chunk_id == chunk_id("u1", c.text) for c in chunks)
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_ids_are_stable_across_runs() -> None:
    first = [c.chunk_id for c in chunk_document(make_document("u1", 7), DEFAULT)]
    second = [c.chunk_id for c in chunk_document(make_document("u1", 7), DEFAULT)]
    assert first == second
    assert all(len(i) == 24 for i in first)


def test_same_text_of_another_user_gets_another_id() -> None:
    assert chunk_id("u1", "## 基础信息\n- 女") != chunk_id("u2", "## 基础信息\n- 女")


def test_ids_unchanged_when_another_users_data_changes() -> None:
    before = chunk_documents([make_document("u1", 1), make_document("u2", 2)], DEFAULT)
    after = chunk_documents([make_document("u1", 1), make_document("u2", 99)], DEFAULT)
    assert before.schema == pl.Schema(CHUNK_SCHEMA)
    u1_before = before.filter(pl.col("user_id") == "u1")["chunk_id"].to_list()
    u1_after = after.filter(pl.col("user_id") == "u1")["chunk_id"].to_list()
    assert u1_before == u1_after
    assert set(before.filter(pl.col("user_id") == "u2")["chunk_id"]) != set(
        after.filter(pl.col("user_id") == "u2")["chunk_id"]
    )


@pytest.mark.parametrize("seed", range(8))
def test_new_chat_message_changes_only_the_last_chunks(seed: int) -> None:
    user, orders, events, messages = make_user("u1", seed)
    before = chunk_document(render_user_document(user, orders, events, messages), DEFAULT)
    new = {
        "message_id": "u1-new",
        "message": "最近又想做一次热玛吉，价格能不能再优惠一点？",
        "sent_at": datetime(2024, 6, 1),
        "channel": "微信",
    }
    after = chunk_document(render_user_document(user, orders, events, [*messages, new]), DEFAULT)
    kept = [a.chunk_id == b.chunk_id for a, b in zip(before, after, strict=False)]
    # all chunks but the last one or two are unchanged, in place
    assert all(kept[:-2]), kept
    assert before[-1].chunk_id != after[-1].chunk_id
    assert "u1-new" in after[-1].source_ids
    assert len(after) - len(before) in (0, 1)
    changed = [c for c in after if c.chunk_id not in {b.chunk_id for b in before}]
    assert all(c.heading_path == "用户发言" for c in changed)


def test_over_long_message_is_split_into_continued_slices() -> None:
    user, _, _, _ = make_user("u1", 0)
    message = {
        "message_id": "m-long",
        "message": phrase(random.Random(5), 1500),
        "sent_at": datetime(2024, 2, 1),
        "channel": None,
    }
    document = render_user_document(user, [], [], [message])
    chunks = chunk_document(document, DEFAULT)
    holding = [c for c in chunks if "m-long" in c.source_ids]
    assert len(holding) >= 4
    slices = [line for c in holding for line in c.text.split("\n") if line.startswith("  （续）")]
    assert slices
    assert all(len(s) <= DEFAULT.size // 2 for s in slices)
    assert "## 用户发言\n" in holding[0].text
    for chunk in holding[1:]:
        assert chunk.text.startswith("## 用户发言\n")
    # the slices, joined, give back the whole line
    line_text = document.lines[-1].text
    pieces = [f"- {line_text}"[: DEFAULT.size // 2]]
    pieces += [s.removeprefix("  （续）") for s in dict.fromkeys(slices)]
    assert "".join(pieces) == f"- {line_text}"
    for a, b in same_section_pairs(holding):
        n = repeated(split_heading(a.text)[1], split_heading(b.text)[1])
        assert 100 <= n <= 150


@pytest.mark.parametrize(
    "options",
    [
        ChunkingOptions(size=200, overlap=60),
        ChunkingOptions(size=300, overlap=80),
        ChunkingOptions(size=600, overlap=120),
        ChunkingOptions(size=1000, overlap=200),
    ],
    ids=str,
)
def test_configurable_size_and_overlap(options: ChunkingOptions) -> None:
    low, high = options.overlap_window
    assert (low, high) == (options.overlap - 20, options.overlap + 30)
    document = DOCUMENTS[2]
    chunks = chunk_document(document, options)
    default = chunk_document(document, DEFAULT)
    if options.size < DEFAULT.size:
        assert len(chunks) > len(default)
    elif options.size > DEFAULT.size:
        assert len(chunks) < len(default)
    checked = 0
    for a, b in same_section_pairs(chunks):
        a_body, b_body = split_heading(a.text)[1], split_heading(b.text)[1]
        if len(a_body) >= high + 1:
            assert low <= repeated(a_body, b_body) <= high, (a.text, b.text)
            checked += 1
    assert checked
    for chunk in chunks:
        items = [line for line in chunk.text.split("\n") if not line.startswith("#")]
        longest = max(len(line) for line in items)
        assert len("\n".join(items)) <= options.size + longest + 1


def test_small_document_is_one_chunk() -> None:
    document = make_document("u1", 0, n_orders=1, n_events=1, n_chat=1)
    document.lines[:] = [line for line in document.lines if len(line.text) < 70]
    chunks = chunk_document(document, DEFAULT)
    assert len(chunks) == 1
    assert chunks[0].text == document.markdown.replace("\n\n", "\n").rstrip("\n")
    assert chunks[0].heading_path == "基础信息"


def test_empty_document_has_no_chunks() -> None:
    assert chunk_document(UserDocument("u1", "c", []), DEFAULT) == []
    assert chunk_documents([], DEFAULT).height == 0


def test_chunk_documents_frame_matches_chunk_document() -> None:
    frame = chunk_documents(DOCUMENTS[:3], DEFAULT)
    expected: list[dict[str, Any]] = [
        c.model_dump() for d in DOCUMENTS[:3] for c in chunk_document(d, DEFAULT)
    ]
    assert frame.to_dicts() == expected


def test_no_overlap_is_carried_into_a_new_section() -> None:
    """A section that starts once the chunk is past a third of its size starts a fresh chunk:
    nothing of the previous section is repeated in front of it (the overlap is within one
    section)."""
    from profiling_assets.core.chunking import chunk_lines

    first = [("行为记录", "", f"甲{i:02d}" + "甲" * 37) for i in range(10)]
    second = [("用户发言", "", f"乙{i:02d}" + "乙" * 37) for i in range(5)]
    chunks = chunk_lines("u1", [*first, *second], ChunkingOptions(size=420, overlap=120))
    texts = [row[3] for row in chunks]
    assert any("甲" in t for t in texts) and any("乙" in t for t in texts)
    for text in texts:
        assert not ("甲" in text and "乙" in text), text
    # within the first section the overlap is there (120 characters ± the window)
    assert sum("甲" in t for t in texts) >= 2
    assert texts[0].split("\n")[-1] in texts[1]
