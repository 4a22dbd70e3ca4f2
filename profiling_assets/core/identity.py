"""Identity stitching: one person from many ids (member number, phones, WeChat openid, device).

Every declared id is normalised by its type (phones to `+86…`, full-width digits to ASCII,
case folded where the type is case-blind), then kept only as a keyed hash: a *node*
`<type>:<HMAC-SHA-256 in base32>`, so no raw phone number or openid goes past the reader.
Ids that share a source row (or an `identities` pair) are edges; the connected components of
the graph are people. Guards against over-merging: values on the spec's deny list and
placeholder values (`00000000000`, `null`) never count; an id linked to more than
`max_people_per_id` ids of another type (the front desk's phone typed into every order) is
set aside; a component of more than `max_component_size` ids is not merged at all.

A person's id (`p_…`) is stable: a component keeps the id its nodes had before; when several
earlier people meet in one component the oldest id survives and the others are recorded as
merges; a component that split keeps the id where most of its earlier nodes went.

Everything here is polars on frames of nodes and edges, no Dagster and no store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from profiling_assets.core.spec import Identity

ID_KEY_ENV = "PROFILING_ID_KEY"
PHONE_TYPES = frozenset({"phone"})
# Ids whose letters mean the same in either case (hex device ids, emails, member numbers).
CASE_BLIND_TYPES = frozenset({"member_no", "device_id", "email"})
# Values people type when they have no id: never an id of anyone.
PLACEHOLDERS = frozenset(
    {"null", "(null)", "none", "nil", "nan", "n/a", "na", "undefined", "unknown", "0"}
    | {"-", "--", "无", "空", "未知", "不详"}
)
PERSON_PREFIX = "p_"

NODE_SCHEMA = {"node": pl.String, "id_type": pl.String, "person_id": pl.String}
MERGE_SCHEMA = {"merged_person_id": pl.String, "person_id": pl.String, "merged_at": pl.Datetime}
EXCLUDED_SCHEMA = {"node": pl.String, "id_type": pl.String, "reason": pl.String, "links": pl.Int64}
PERSON_SCHEMA = {"person_id": pl.String, "since": pl.Datetime, "id_counts": pl.String}
OVERSIZE_SCHEMA = {"component": pl.String, "size": pl.Int64, "id_types": pl.String}


class IdentityKeyError(ValueError):
    """No key to pseudonymise ids with (the message says how to set one)."""


def identity_key(value: str | None) -> bytes:
    """The HMAC key from its setting; refused when missing or too short to be a secret."""
    if not value or len(value) < 16:
        raise IdentityKeyError(
            f"身份拼接需要密钥：请设置环境变量 {ID_KEY_ENV}（至少 16 个字符的随机串，"
            f"例如 `openssl rand -hex 32`），并妥善保存——换了密钥，所有 person_id 都会重建 / "
            f"identity stitching needs {ID_KEY_ENV} (a random secret of 16+ characters)"
        )
    return value.encode("utf-8")


def normalised_id(value: pl.Expr, id_type: str) -> pl.Expr:
    """The comparable form of an id; null for empty and placeholder values.

    Phones: digits only, `+86` before mainland mobile numbers written with or without a
    country code (`+86 138 0013 8000`, `138-0013-8000`, full-width digits all agree).
    """
    text = value.cast(pl.String).str.normalize("NFKC").str.strip_chars()
    if id_type in PHONE_TYPES:
        digits = text.str.replace_all(r"\D", "")
        national = digits.str.replace(r"^(?:0086|86)(1\d{10})$", "${1}")
        mobile = national.str.contains(r"^1\d{10}$")
        text = pl.when(mobile).then(pl.lit("+86") + national).otherwise(digits)
    elif id_type in CASE_BLIND_TYPES:
        text = text.str.to_lowercase()
    bare = text.str.replace_all(r"^\+86|[\s+\-_.]", "")
    repeated = (bare.str.len_chars() >= 4) & (
        bare.str.strip_chars(bare.str.slice(0, 1)).str.len_chars() == 0
    )
    placeholder = (
        (bare.str.len_chars() == 0) | text.str.to_lowercase().is_in(list(PLACEHOLDERS)) | repeated
    )
    return pl.when(placeholder.not_()).then(text)


def pseudonym(key: bytes, id_type: str, value: str) -> str:
    """`<type>:` + 16 base32 characters of HMAC-SHA-256(key, type and value): stable per key, and
    never shaped like a phone, ID or card number (no digit 0, 1, 8 or 9)."""
    digest = hmac.new(key, f"{id_type}\x1f{value}".encode(), hashlib.sha256).digest()
    return f"{id_type}:" + base64.b32encode(digest).decode("ascii")[:16].lower()


def id_nodes(values: pl.Series, id_type: str, key: bytes, deny: frozenset[str]) -> pl.Series:
    """The node of each value (null where the value is empty, a placeholder or denied);
    `deny` holds raw values, compared in their normalised form."""
    normal = pl.DataFrame({"v": values}).select(normalised_id(pl.col("v"), id_type)).to_series()
    denied = pl.DataFrame({"d": sorted(deny)}, schema={"d": pl.String}).select(
        normalised_id(pl.col("d"), id_type)
    )
    if denied.height:
        normal = normal.set(normal.is_in(denied.to_series().drop_nulls()), None)
    unique = normal.drop_nulls().unique()
    lookup = {v: pseudonym(key, id_type, v) for v in unique.to_list()}
    return normal.replace_strict(lookup, default=None, return_dtype=pl.String).alias(values.name)


def row_nodes(
    frame: pl.DataFrame, columns: Mapping[str, str], key: bytes, deny: frozenset[str]
) -> pl.DataFrame:
    """One node column per declared id column of `frame` (`column → id type`), same rows."""
    return pl.DataFrame(
        [
            id_nodes(frame[column], id_type, key, deny).alias(column)
            for column, id_type in columns.items()
        ]
    )


def row_edges(nodes: pl.DataFrame) -> pl.DataFrame:
    """Every pair of nodes that share a row, as edges `a`–`b` (each pair once per row)."""
    names = nodes.columns
    pairs = [
        nodes.select(pl.col(x).alias("a"), pl.col(y).alias("b"))
        for i, x in enumerate(names)
        for y in names[i + 1 :]
    ]
    edges = pl.concat(pairs) if pairs else pl.DataFrame(schema={"a": pl.String, "b": pl.String})
    return edges.drop_nulls().filter(pl.col("a") != pl.col("b")).unique()


def pair_edges(pairs: pl.DataFrame, key: bytes, deny: frozenset[str]) -> pl.DataFrame:
    """Edges from an `identities` table (id_type_a, id_a, id_type_b, id_b)."""
    sides = []
    for side in ("a", "b"):
        types = pairs[f"id_type_{side}"].cast(pl.String).str.strip_chars().str.to_lowercase()
        nodes = pl.Series(f"n{side}", [None] * pairs.height, pl.String)
        for id_type in types.drop_nulls().unique().to_list():
            mask = (types == id_type).fill_null(False)
            found = id_nodes(pairs[f"id_{side}"].filter(mask), id_type, key, deny)
            nodes = nodes.scatter(mask.arg_true(), found)
        sides.append(nodes)
    return row_edges(pl.DataFrame(sides))


def node_type(node: pl.Expr) -> pl.Expr:
    return node.str.split_exact(":", 1).struct.field("field_0")


@dataclass(frozen=True)
class Stitched:
    """Components before person ids: `components` (node, component), the ids set aside
    (`excluded`) and the components too large to merge (`oversize`)."""

    components: pl.DataFrame
    excluded: pl.DataFrame
    oversize: pl.DataFrame


def stitch(nodes: pl.Series, edges: pl.DataFrame, rules: Identity) -> Stitched:
    """Connected components over `edges` among `nodes`, with the over-merging guards."""
    both = pl.concat([edges, edges.select(pl.col("b").alias("a"), pl.col("a").alias("b"))])
    shared = shared_ids(both, rules)
    excluded = shared.select(
        pl.col("a").alias("node"), node_type(pl.col("a")).alias("id_type"), "reason", "links"
    )
    kept = both.filter(~pl.col("a").is_in(shared["a"]) & ~pl.col("b").is_in(shared["a"]))
    everyone = pl.DataFrame({"node": nodes}).drop_nulls().unique()
    everyone = everyone.filter(~pl.col("node").is_in(shared["a"]))
    components = _connected_components(everyone, kept)
    sizes = components.group_by("component").agg(
        pl.len().alias("size"),
        node_type(pl.col("node")).unique().sort().str.join("、").alias("id_types"),
    )
    oversize = sizes.filter(pl.col("size") > rules.max_component_size).sort("size", descending=True)
    if oversize.height:
        # Not merged: each id of a too-large component stays a person of its own.
        split = pl.col("component").is_in(oversize["component"])
        components = components.with_columns(
            pl.when(split).then(pl.col("node")).otherwise(pl.col("component")).alias("component")
        )
    return Stitched(
        components,
        excluded.cast(EXCLUDED_SCHEMA),  # type: ignore[arg-type]
        oversize.select("component", pl.col("size").cast(pl.Int64), "id_types"),
    )


def shared_ids(both: pl.DataFrame, rules: Identity) -> pl.DataFrame:
    """The ids several people share (a, reason, links), by two rules over direct links:
    linked to more than `max_people_per_id` ids of one other type (the front desk's phone on
    every order), or to two values of a type each person has only one of (`one_per_person`:
    a phone on two member numbers is two people's, however few)."""
    links = both.group_by("a", node_type(pl.col("b")).alias("t")).agg(
        pl.col("b").n_unique().cast(pl.Int64).alias("links")
    )
    unique = pl.col("t").is_in(rules.one_per_person) & (node_type(pl.col("a")) != pl.col("t"))
    many = pl.col("links") > rules.max_people_per_id
    reason = (
        pl.when(many)
        .then(
            pl.format(
                "连着 {} 个 {}，超过 {}，视为共享 id", "links", "t", pl.lit(rules.max_people_per_id)
            )
        )
        .when(unique & (pl.col("links") > 1))
        .then(pl.format("连着 {} 个不同的 {}（每人只有一个），视为多人共用的 id", "links", "t"))
    )
    flagged = links.with_columns(reason.alias("reason")).filter(pl.col("reason").is_not_null())
    return flagged.sort("links", descending=True).group_by("a", maintain_order=True).first()


def _connected_components(nodes: pl.DataFrame, edges: pl.DataFrame) -> pl.DataFrame:
    """(node, component): the smallest node of its component, by min-label propagation with
    pointer jumping (rounds grow with the log of a component's diameter, not its size)."""
    labels = nodes.select("node", pl.col("node").alias("component"))
    while True:
        smallest = (
            edges.join(labels, left_on="b", right_on="node")
            .group_by("a")
            .agg(pl.col("component").min().alias("seen"))
        )
        step = labels.join(smallest, left_on="node", right_on="a", how="left").select(
            "node", pl.min_horizontal("component", "seen").alias("component")
        )
        # Pointer jumping: a node takes its label's label.
        jumped = step.join(
            step.rename({"node": "component", "component": "hop"}), on="component", how="left"
        ).select("node", pl.coalesce("hop", "component").alias("component"))
        if jumped.join(labels, on=["node", "component"], how="anti").height == 0:
            return jumped
        labels = jumped


@dataclass(frozen=True)
class PersonIds:
    """The outcome of one stitching: node → person, the people, and this run's merges."""

    nodes: pl.DataFrame  # NODE_SCHEMA
    persons: pl.DataFrame  # PERSON_SCHEMA
    merges: pl.DataFrame  # MERGE_SCHEMA


def assign_person_ids(
    components: pl.DataFrame,
    previous_nodes: pl.DataFrame,
    previous_persons: pl.DataFrame,
    now: datetime,
) -> PersonIds:
    """Stable person ids for this run's components.

    An earlier person goes to the component holding most of its earlier nodes; a component
    that received several keeps the oldest (earliest `since`, then smallest id) and records
    the rest as merged into it; a component that received none gets a new id from its
    smallest node (a keyed hash, so the id reveals nothing).
    """
    claims = (
        components.join(previous_nodes.select("node", "person_id"), on="node", how="inner")
        .group_by("component", "person_id")
        .len()
        .sort(["len", "component"], descending=[True, False])
    )
    owned = claims.group_by("person_id", maintain_order=True).first()
    since = previous_persons.select("person_id", "since")
    owned = owned.join(since, on="person_id", how="left").with_columns(
        pl.col("since").fill_null(now)
    )
    ranked = owned.sort(["component", "since", "person_id"]).group_by(
        "component", maintain_order=True
    )
    keep = ranked.first().select("component", "person_id", "since")
    merges = (
        owned.join(keep.rename({"person_id": "survivor"}).drop("since"), on="component")
        .filter(pl.col("person_id") != pl.col("survivor"))
        .select(
            pl.col("person_id").alias("merged_person_id"),
            pl.col("survivor").alias("person_id"),
            pl.lit(now).alias("merged_at"),
        )
    )
    fresh = components.select("component").unique().join(keep, on="component", how="anti")
    taken = set(previous_persons["person_id"].to_list()) | set(keep["person_id"].to_list())
    new_ids = [_new_person_id(c, taken) for c in fresh["component"].sort().to_list()]
    fresh = pl.DataFrame(
        {"component": fresh["component"].sort(), "person_id": new_ids, "since": now},
        schema={"component": pl.String, "person_id": pl.String, "since": pl.Datetime},
    )
    people = pl.concat([keep.cast({"since": pl.Datetime}), fresh])
    nodes = components.join(people, on="component").select(
        "node", node_type(pl.col("node")).alias("id_type"), "person_id"
    )
    return PersonIds(
        nodes.sort("node"),
        _persons(nodes, people),
        merges.cast(MERGE_SCHEMA),  # type: ignore[arg-type]
    )


def _new_person_id(component: str, taken: set[str]) -> str:
    salt = ""
    while True:
        digest = hashlib.sha256(f"{component}{salt}".encode()).digest()
        person = PERSON_PREFIX + base64.b32encode(digest).decode("ascii")[:12].lower()
        if person not in taken:
            taken.add(person)
            return person
        salt += "#"


def _persons(nodes: pl.DataFrame, people: pl.DataFrame) -> pl.DataFrame:
    counts = nodes.group_by("person_id", "id_type").len().sort("id_type")
    by_person = counts.group_by("person_id").agg(pl.struct("id_type", "len").alias("ids"))
    rows = {
        r["person_id"]: json.dumps({i["id_type"]: i["len"] for i in r["ids"]}, ensure_ascii=False)
        for r in by_person.iter_rows(named=True)
    }
    return people.select(
        "person_id",
        "since",
        pl.col("person_id")
        .replace_strict(rows, default="{}", return_dtype=pl.String)
        .alias("id_counts"),
    ).sort("person_id")


def resolve_merges(merges: pl.DataFrame) -> dict[str, str]:
    """merged id → the id that holds it now, following chains (a→b, then b→c: a→c)."""
    step = dict(zip(merges["merged_person_id"], merges["person_id"], strict=True))
    final: dict[str, str] = {}
    for start in step:
        seen, current = {start}, step[start]
        while current in step and current not in seen:
            seen.add(current)
            current = step[current]
        final[start] = current
    return final


def row_person(nodes: pl.DataFrame, node_persons: pl.DataFrame) -> pl.Series:
    """The person of each row: that of its first id (in declared order) that has one."""
    lookup = dict(zip(node_persons["node"], node_persons["person_id"], strict=True))
    found = [
        nodes[c].replace_strict(lookup, default=None, return_dtype=pl.String) for c in nodes.columns
    ]
    return pl.DataFrame(found).select(pl.coalesce(nodes.columns)).to_series().alias("person_id")


def pairwise_scores(predicted: Iterable[str | None], true: Iterable[str]) -> tuple[float, float]:
    """Pairwise precision and recall of a clustering of rows (a row with no prediction is a
    cluster of its own): of the row pairs put together, how many belong together, and of
    those that belong together, how many were put together."""
    frame = pl.DataFrame(
        {"p": list(predicted), "t": list(true)}, schema={"p": pl.String, "t": pl.String}
    )
    frame = frame.with_row_index("r").with_columns(
        pl.coalesce("p", pl.lit("__single_") + pl.col("r").cast(pl.String)).alias("p")
    )

    def pairs(counts: pl.Series) -> int:
        return int((counts * (counts - 1) // 2).sum())

    together = pairs(frame.group_by("p", "t").len()["len"])
    predicted_pairs = pairs(frame.group_by("p").len()["len"])
    true_pairs = pairs(frame.group_by("t").len()["len"])
    precision = together / predicted_pairs if predicted_pairs else 1.0
    recall = together / true_pairs if true_pairs else 1.0
    return precision, recall


ID_TYPE_NAMES = {
    "phone": "手机号",
    "member_no": "会员号",
    "wechat_openid": "微信 openid",
    "wechat_unionid": "微信 unionid",
    "device_id": "设备号",
    "email": "邮箱",
    "user_id": "用户编号",
}


def id_sources_text(id_counts: str | None) -> str | None:
    """What a person's document says of the ids it was built from: counts per type, never
    the ids (`persons.id_counts` JSON → `手机号 2 个、微信 openid 1 个`)."""
    if not id_counts:
        return None
    counts: dict[str, int] = json.loads(id_counts)
    parts = [f"{ID_TYPE_NAMES.get(t, t)} {n} 个" for t, n in sorted(counts.items())]
    return "、".join(parts) or None
