"""Multi-id mode of the sample source: the same people, but no shared `user_id`.

The till knows a member number and a phone (written in several formats, full-width digits
included), the chat export a WeChat openid, the mini-program's log a device id (and sometimes
the openid); an `identities` table pairs openids with phones and devices with openids, as a
mini-program's phone authorisation would. Noise, as real exports have it: the front desk's
phone typed into orders, the store's tablet in the browsing log, `00000000000` in the CRM, a
few people with a second phone. `truth_identity` names the true person of every row, so the
stitching can be scored pairwise; `truth` is keyed by member number.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Mapping

import polars as pl

from profiling_assets.core.contract import (
    IDENTITIES_TABLE,
    IDENTITY_PAIR_COLUMNS,
    SOURCE_TABLES,
    TRUTH_IDENTITY_COLUMNS,
    TRUTH_IDENTITY_TABLE,
    TRUTH_TABLE,
)

FRONT_DESK_PHONE = "139 5710 8866"
STORE_TABLET = "IPAD-FRONTDESK-01"
PLACEHOLDER_PHONE = "00000000000"
NOISE_SHARE = 0.03  # of sales and behaviour rows: a shared front-desk id beside the true one
SECOND_PHONE_SHARE = 0.04
PLACEHOLDER_SHARE = 0.01

# The `[identity]` section that reads this source (appended to a spec by `generate --multi-id`).
IDENTITY_SPEC = """
[identity]
max_people_per_id = 3
max_component_size = 20
deny = ["00000000000"]

[identity.ids.users]
"会员号" = "member_no"
"手机号" = "phone"

[identity.ids.sales]
"手机号" = "phone"
"会员号" = "member_no"

[identity.ids.behaviour]
"设备号" = "device_id"
"openid" = "wechat_openid"

[identity.ids.chat]
"openid" = "wechat_openid"

[identity.ids.truth]
"会员号" = "member_no"
"""


class _Person:
    def __init__(self, rng: random.Random, index: int, phones: set[str]) -> None:
        self.member_no = f"VIP{100000 + index}"
        self.phones = [_new_phone(rng, phones)]
        if rng.random() < SECOND_PHONE_SHARE:
            self.phones.append(_new_phone(rng, phones))
        alphabet = string.ascii_letters + string.digits + "_-"
        self.openid = "o" + "".join(rng.choices(alphabet, k=27))
        self.device = "".join(rng.choices("0123456789abcdef", k=32))


def _new_phone(rng: random.Random, taken: set[str]) -> str:
    while True:
        phone = "1" + rng.choice("3456789") + "".join(rng.choices(string.digits, k=9))
        if phone not in taken and phone != FRONT_DESK_PHONE.replace(" ", ""):
            taken.add(phone)
            return phone


def _phone_written(rng: random.Random, phone: str) -> str:
    """One of the ways exports write a mainland mobile number."""
    full_width = phone.translate({ord(d): chr(0xFF10 + int(d)) for d in string.digits})
    forms = (
        phone,
        f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}",
        f"{phone[:3]}-{phone[3:7]}-{phone[7:]}",
        f"86{phone}",
        full_width,
    )
    return rng.choice(forms)


def _member_written(rng: random.Random, member_no: str) -> str:
    return rng.choice((member_no, member_no.lower(), f" {member_no} "))


def to_multi_id(tables: Mapping[str, pl.DataFrame], seed: int) -> dict[str, pl.DataFrame]:
    """The single-id sample tables rewritten as a multi-id export (see the module doc)."""
    rng = random.Random(seed * 7919 + 17)
    phones: set[str] = set()
    people: dict[str, _Person] = {}

    def person(user_id: str | None) -> _Person | None:
        if user_id is None:
            return None
        if user_id not in people:  # unknown ids (planted bad rows) become unlinked people
            people[user_id] = _Person(rng, len(people), phones)
        return people[user_id]

    for user_id in tables["users"]["user_id"].to_list():
        person(user_id)
    out: dict[str, pl.DataFrame] = {}
    truth_rows: list[dict[str, str]] = []
    out["users"] = _users(tables["users"], person, rng, truth_rows)
    for table, ids in (
        ("sales", _sales_ids(rng)),
        ("behaviour", _behaviour_ids(rng)),
        ("chat", lambda who: {"openid": who.openid}),
    ):
        key = SOURCE_TABLES[table].key
        out[table] = _keyed(tables[table], table, key, person, truth_rows, ids)
    out[IDENTITIES_TABLE] = _pairs(people, rng)
    if TRUTH_TABLE in tables:
        truth = tables[TRUTH_TABLE]
        members = [people[u].member_no if u in people else None for u in truth["user_id"]]
        out[TRUTH_TABLE] = truth.drop("user_id").insert_column(0, pl.Series("会员号", members))
    out[TRUTH_IDENTITY_TABLE] = pl.DataFrame(
        truth_rows, schema=dict.fromkeys(TRUTH_IDENTITY_COLUMNS, pl.String)
    )
    return out


def _users(
    users: pl.DataFrame,
    person: Callable[[str | None], _Person | None],
    rng: random.Random,
    truth_rows: list[dict[str, str]],
) -> pl.DataFrame:
    rows = []
    for row in users.to_dicts():
        user_id = row.pop("user_id")
        who = person(user_id)
        member = _member_written(rng, who.member_no) if who else None
        written = [who.phones[0]] if who else [None]
        if who and rng.random() < PLACEHOLDER_SHARE:
            written = [PLACEHOLDER_PHONE]
        if who and len(who.phones) > 1:
            written.append(who.phones[1])  # a second CRM row: the same member, a new phone
        for phone in written:
            shown = _phone_written(rng, phone) if phone and phone != PLACEHOLDER_PHONE else phone
            rows.append({"会员号": member, "手机号": shown, **row})
            if who:
                truth_rows.append(
                    {"table_name": "users", "row_key": who.member_no, "person": user_id}
                )
    return pl.DataFrame(rows, infer_schema_length=None).select(
        "会员号", "手机号", *[c for c in users.columns if c != "user_id"]
    )


def _sales_ids(rng: random.Random) -> Callable[[_Person], dict[str, str | None]]:
    def ids(who: _Person) -> dict[str, str | None]:
        member = _member_written(rng, who.member_no) if rng.random() < 0.4 else None
        if rng.random() < NOISE_SHARE:
            return {"手机号": FRONT_DESK_PHONE, "会员号": _member_written(rng, who.member_no)}
        return {"手机号": _phone_written(rng, rng.choice(who.phones)), "会员号": member}

    return ids


def _behaviour_ids(rng: random.Random) -> Callable[[_Person], dict[str, str | None]]:
    def ids(who: _Person) -> dict[str, str | None]:
        if rng.random() < NOISE_SHARE:
            return {"设备号": STORE_TABLET, "openid": who.openid}
        device = who.device.upper() if rng.random() < 0.3 else who.device
        return {"设备号": device, "openid": who.openid if rng.random() < 0.5 else None}

    return ids


def _keyed(
    table: pl.DataFrame,
    name: str,
    key: str,
    person: Callable[[str | None], _Person | None],
    truth_rows: list[dict[str, str]],
    ids: Callable[[_Person], dict[str, str | None]],
) -> pl.DataFrame:
    """`table` without `user_id`, with the id columns `ids` gives for each row's person."""
    given: list[dict[str, str | None]] = []
    for user_id, row_key in zip(table["user_id"].to_list(), table[key].to_list(), strict=True):
        who = person(user_id)
        given.append(ids(who) if who else {})
        if who and row_key is not None:
            truth_rows.append({"table_name": name, "row_key": str(row_key), "person": user_id})
    columns = list(dict.fromkeys(c for row in given for c in row))
    frame = table.drop("user_id")
    for column in reversed(columns):
        values = [row.get(column) for row in given]
        frame = frame.insert_column(1, pl.Series(column, values, pl.String))
    return frame


def _pairs(people: Mapping[str, _Person], rng: random.Random) -> pl.DataFrame:
    rows = []
    for who in people.values():
        phone = _phone_written(rng, who.phones[0])
        rows.append(("wechat_openid", who.openid, "phone", phone))
        rows.append(("device_id", who.device, "wechat_openid", who.openid))
    rng.shuffle(rows)
    return pl.DataFrame(rows, schema=list(IDENTITY_PAIR_COLUMNS), orient="row")


def id_tables_at_scale(
    people: int, seed: int, rows_per_person: int = 24
) -> dict[str, pl.DataFrame]:
    """Only the id columns of a multi-id source (no text), vectorised: `people` people and
    about `rows_per_person` rows each, with the same shapes as `to_multi_id` (phones in mixed
    writing, optional member numbers and openids, shared front-desk ids), for the stitching
    benchmark of a million rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = pl.DataFrame({"p": np.arange(people)})
    ids = ids.with_columns(
        (pl.lit("VIP") + (pl.col("p") + 100000).cast(pl.String)).alias("member"),
        (pl.lit("13") + (pl.col("p") + 100_000_000).cast(pl.String)).alias("phone"),
        (pl.lit("o") + pl.col("p").cast(pl.String).str.zfill(27)).alias("openid"),
        (pl.lit("d") + pl.col("p").cast(pl.String).str.zfill(31)).alias("device"),
    )
    each = max(1, (rows_per_person - 2) // 3)

    def events(n: int) -> pl.DataFrame:
        who = rng.integers(0, people, n)
        return ids[who].with_columns(pl.Series("u", rng.random(n)), pl.Series("v", rng.random(n)))

    sales = events(people * each).select(
        pl.when(pl.col("u") < NOISE_SHARE)
        .then(pl.lit(FRONT_DESK_PHONE))
        .when(pl.col("u") < 0.5)
        .then(pl.lit("+86 ") + pl.col("phone"))
        .otherwise(pl.col("phone"))
        .alias("手机号"),
        pl.when(pl.col("v") < 0.4).then(pl.col("member").str.to_lowercase()).alias("会员号"),
    )
    behaviour = events(people * each).select(
        pl.when(pl.col("u") < NOISE_SHARE)
        .then(pl.lit(STORE_TABLET))
        .otherwise(pl.col("device"))
        .alias("设备号"),
        pl.when(pl.col("v") < 0.5).then(pl.col("openid")).alias("openid"),
    )
    chat = events(people * each).select(pl.col("openid"))
    pairs = pl.concat(
        [
            ids.select(
                pl.lit("wechat_openid").alias("id_type_a"),
                pl.col("openid").alias("id_a"),
                pl.lit("phone").alias("id_type_b"),
                pl.col("phone").alias("id_b"),
            ),
            ids.select(
                pl.lit("device_id").alias("id_type_a"),
                pl.col("device").alias("id_a"),
                pl.lit("wechat_openid").alias("id_type_b"),
                pl.col("openid").alias("id_b"),
            ),
        ]
    )
    users = ids.select(pl.col("member").alias("会员号"), pl.col("phone").alias("手机号"))
    return {
        "users": users,
        "sales": sales,
        "behaviour": behaviour,
        "chat": chat,
        IDENTITIES_TABLE: pairs,
    }
