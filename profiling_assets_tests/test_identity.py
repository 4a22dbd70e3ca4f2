"""Identity stitching: one person from member numbers, phones, openids and device ids.

Unit tests on the pure functions (normalising, keyed hashes, components, the guards, stable
ids and merges), the scores on a generated multi-id source of 1,000 people, and the real
Dagster chain on a small multi-id source: no planted phone or openid in any store, prompt or
event afterwards, and two people merged across two runs keep one id and one history.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pytest

from profiling_assets.assets.identity import PERSON_IDS, STITCH_JOB
from profiling_assets.config import Settings
from profiling_assets.core.identity import (
    NODE_SCHEMA,
    PERSON_SCHEMA,
    IdentityKeyError,
    assign_person_ids,
    id_nodes,
    identity_key,
    normalised_id,
    pairwise_scores,
    resolve_merges,
    row_edges,
    row_nodes,
    stitch,
)
from profiling_assets.core.pii import find_pii
from profiling_assets.core.spec import Identity, SpecError, load_spec, parse_spec, resolve_spec_path
from profiling_assets.pipeline import build_definitions
from profiling_assets.stores.identity import (
    load_stitching,
    stitch_source,
    stitched_rows_against_truth,
)
from profiling_assets.stores.source import open_source
from profiling_assets.synth import write_source
from profiling_assets.synth.multi_id import (
    FRONT_DESK_PHONE,
    IDENTITY_SPEC,
    STORE_TABLET,
    to_multi_id,
)
from profiling_assets.synth.sample import sample_tables
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.ollama_like import OllamaLike
from profiling_assets_tests.sample_runs import add_cohorts, ollama_settings

KEY = b"test-identity-key-0123456789"
T0 = datetime(2026, 1, 1)
T1 = datetime(2026, 2, 1)


def _normal(values: list[str | None], id_type: str) -> list[str | None]:
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    return frame.select(normalised_id(pl.col("v"), id_type)).to_series().to_list()


# -- normalise, then pseudonymise ----------------------------------------------------------


def test_phone_numbers_in_every_written_form_are_one_id() -> None:
    forms = [
        "13800138000",
        "+86 138 0013 8000",
        "138-0013-8000",
        "8613800138000",
        "0086 13800138000",
        "１３８００１３８０００",
        " 138 0013 8000 ",
    ]
    assert set(_normal(forms, "phone")) == {"+8613800138000"}
    # A landline keeps its digits; it is not mistaken for a mobile number.
    assert _normal(["0571-8888 6666"], "phone") == ["057188886666"]


def test_placeholders_and_blanks_are_no_id() -> None:
    values = ["00000000000", "", "  ", None, "null", "N/A", "-", "xxxx", "无", "undefined"]
    assert _normal(values, "phone") == [None] * len(values)
    assert _normal(values, "wechat_openid") == [None] * len(values)


def test_case_folds_only_where_the_type_is_case_blind() -> None:
    assert _normal(["VIP100", " vip100 "], "member_no") == ["vip100", "vip100"]
    assert _normal(["ABCDEF12", "abcdef12"], "device_id") == ["abcdef12", "abcdef12"]
    # WeChat openids are case-sensitive: two different people.
    assert _normal(["oAbC", "oabc"], "wechat_openid") == ["oAbC", "oabc"]


def test_ids_are_kept_only_as_keyed_hashes() -> None:
    values = pl.Series(["+86 138 0013 8000", "13800138000", "oAbCdEfG123"])
    nodes = id_nodes(values, "phone", KEY, frozenset()).to_list()
    assert nodes[0] == nodes[1] and nodes[0].startswith("phone:")
    assert all("138" not in n and "0013" not in n for n in nodes if n)
    assert all(find_pii(n) == [] for n in nodes if n)
    # Another key gives other hashes: without the key the ids cannot be recomputed.
    other = id_nodes(values, "phone", b"another-key-0123456789", frozenset()).to_list()
    assert other[0] != nodes[0]


def test_denied_values_never_count_in_any_written_form() -> None:
    values = pl.Series(["139 5710 8866", "+86 13957108866", "13800138000"])
    nodes = id_nodes(values, "phone", KEY, frozenset({"13957108866"})).to_list()
    assert nodes[0] is None and nodes[1] is None and nodes[2] is not None


def test_a_missing_or_short_key_is_refused_with_how_to_set_one() -> None:
    for value in ("", None, "short", "x" * 15):
        with pytest.raises(IdentityKeyError, match="PROFILING_ID_KEY"):
            identity_key(value)
    assert identity_key("x" * 16) == b"x" * 16  # 16 characters is the floor


# -- stitch, guard, keep ids stable --------------------------------------------------------


def _graph(rows: list[dict[str, str | None]], columns: dict[str, str], rules: Identity):
    frame = pl.DataFrame(rows, schema={c: pl.String for c in columns})
    nodes = row_nodes(frame, columns, KEY, frozenset(rules.deny))
    every = pl.concat([nodes[c] for c in nodes.columns]).alias("node")
    return nodes, stitch(every, row_edges(nodes), rules)


COLUMNS = {"member": "member_no", "phone": "phone", "openid": "wechat_openid"}


def _people(nodes: pl.DataFrame, components: pl.DataFrame) -> list[str | None]:
    lookup = dict(zip(components["node"], components["component"], strict=True))
    return [next((lookup[n] for n in row if n in lookup), None) for row in nodes.iter_rows()]


def test_rows_sharing_any_id_are_one_person_and_two_phones_join_through_the_member() -> None:
    rows = [
        {"member": "M1", "phone": "13800000001", "openid": None},
        {"member": "m1", "phone": "13800000002", "openid": None},  # a second phone
        {"member": None, "phone": "138-0000-0002", "openid": "oX"},  # openid via phone 2
        {"member": "M2", "phone": "13800000003", "openid": "oY"},
    ]
    nodes, stitched = _graph(rows, COLUMNS, Identity(ids={"users": {"member": "member_no"}}))
    people = _people(nodes, stitched.components)
    assert people[0] == people[1] == people[2] != people[3]
    assert stitched.excluded.height == 0 and stitched.oversize.height == 0


def test_a_shared_front_desk_phone_is_set_aside_and_reported() -> None:
    rules = Identity(ids={"users": {"member": "member_no"}}, max_people_per_id=3)
    desk = "139 5710 8866"
    rows = [{"member": f"M{i}", "phone": desk, "openid": None} for i in range(6)]
    rows.append({"member": "M0", "phone": "13800000009", "openid": None})
    nodes, stitched = _graph(rows, COLUMNS, rules)
    people = _people(nodes, stitched.components)
    assert len(set(people[:6])) == 6  # six people, not one
    assert people[6] == people[0]  # M0's own phone still joins M0
    assert stitched.excluded["id_type"].to_list() == ["phone"]
    assert stitched.excluded["links"].to_list() == [6]


def test_a_phone_on_two_member_numbers_is_shared_however_few_people() -> None:
    """30 customers, the front desk's phone on 3 orders: below any count threshold, yet two
    member numbers (one per person) on one phone mean two people (the 30-user eval had
    pairwise precision 0.80 from exactly this before the rule)."""
    rows = [
        {"member": "M1", "phone": "13800000001", "openid": None},
        {"member": "M2", "phone": "13800000002", "openid": None},
        {"member": "M1", "phone": "139 5710 8866", "openid": None},  # the desk
        {"member": "M2", "phone": "13957108866", "openid": None},  # the desk again
        {"member": "M3", "phone": "13800000003", "openid": None},
        {"member": "M3", "phone": "13800000004", "openid": None},  # a second phone: kept
    ]
    nodes, stitched = _graph(rows, COLUMNS, Identity(ids={"users": {"member": "member_no"}}))
    people = _people(nodes, stitched.components)
    assert people[0] == people[2] != people[1] == people[3]
    assert people[4] == people[5]
    assert stitched.excluded.select("id_type", "links").rows() == [("phone", 2)]
    assert "每人只有一个" in stitched.excluded["reason"][0]


def test_a_component_above_the_limit_is_not_merged_and_is_listed() -> None:
    # Only the size guard: with `one_per_person` the phones below would be set aside first.
    rules = Identity(
        ids={"users": {"member": "member_no"}}, max_component_size=4, one_per_person=[]
    )
    # A chain M0–P0–M1–P1–M2 …: no id is shared widely, yet the chain joins 10 ids.
    rows = [{"member": f"M{i}", "phone": f"1380000000{i}", "openid": None} for i in range(5)]
    rows += [{"member": f"M{i + 1}", "phone": f"1380000000{i}", "openid": None} for i in range(4)]
    nodes, stitched = _graph(rows, COLUMNS, rules)
    assert stitched.oversize.height == 1
    assert stitched.oversize.row(0)[1:] == (10, "member_no、phone")
    # Every id stays alone (ten people); a row is the person of its first id, its member.
    assert stitched.components["component"].n_unique() == 10
    assert len(set(_people(nodes, stitched.components))) == 5


def _assign(components: pl.DataFrame, before: Any = None, when: datetime = T0):
    nodes, persons = before or (
        pl.DataFrame(schema=NODE_SCHEMA),
        pl.DataFrame(schema=PERSON_SCHEMA),
    )
    return assign_person_ids(components, nodes, persons, when)


def _components(groups: list[list[str]]) -> pl.DataFrame:
    rows = [(node, min(group)) for group in groups for node in group]
    return pl.DataFrame(rows, schema=["node", "component"], orient="row")


def test_person_ids_are_stable_when_a_person_gains_an_id() -> None:
    first = _assign(_components([["phone:a", "member_no:b"], ["phone:c"]]))
    later = _assign(
        _components([["phone:a", "member_no:b", "device_id:z"], ["phone:c"]]),
        (first.nodes, first.persons),
        T1,
    )
    before = dict(zip(first.nodes["node"], first.nodes["person_id"], strict=True))
    after = dict(zip(later.nodes["node"], later.nodes["person_id"], strict=True))
    assert after["phone:a"] == after["device_id:z"] == before["phone:a"]
    assert after["phone:c"] == before["phone:c"]
    assert later.merges.height == 0
    # A re-run of the same stitching changes nothing.
    again = _assign(
        _components([["phone:a", "member_no:b"], ["phone:c"]]), (first.nodes, first.persons), T1
    )
    assert again.nodes.equals(first.nodes) and again.merges.height == 0


def test_when_two_people_meet_the_older_id_survives_and_the_merge_is_logged() -> None:
    first = _assign(_components([["phone:a"]]))
    second = _assign(_components([["phone:a"], ["phone:c"]]), (first.nodes, first.persons), T1)
    old = first.nodes["person_id"][0]
    young = second.nodes.filter(pl.col("node") == "phone:c")["person_id"][0]
    # "phone:c" sorts after "phone:a" but the test makes the younger one the smaller node too.
    joined = _assign(
        _components([["phone:a", "phone:c"]]), (second.nodes, second.persons), datetime(2026, 3, 1)
    )
    assert set(joined.nodes["person_id"]) == {old}
    assert joined.merges.select("merged_person_id", "person_id").rows() == [(young, old)]
    assert resolve_merges(
        pl.DataFrame({"merged_person_id": ["x", "y"], "person_id": ["y", "z"]})
    ) == {
        "x": "z",
        "y": "z",
    }


def test_a_split_keeps_the_id_where_most_of_its_ids_went() -> None:
    first = _assign(_components([["phone:a", "member_no:b", "device_id:c"]]))
    split = _assign(
        _components([["phone:a", "member_no:b"], ["device_id:c"]]), (first.nodes, first.persons), T1
    )
    old = first.nodes["person_id"][0]
    after = dict(zip(split.nodes["node"], split.nodes["person_id"], strict=True))
    assert after["phone:a"] == after["member_no:b"] == old != after["device_id:c"]


def test_pairwise_scores_count_pairs_of_rows() -> None:
    assert pairwise_scores(["a", "a", "b", None], ["x", "x", "x", "y"]) == (1.0, 1 / 3)
    assert pairwise_scores(["a", "a", "a"], ["x", "x", "y"]) == (1 / 3, 1.0)


# -- the spec ------------------------------------------------------------------------------


def _clinic_with(identity: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(resolve_spec_path("clinic").read_text("utf-8") + identity)


def test_spec_declares_ids_per_table_and_names_a_bad_table() -> None:
    spec = parse_spec(_clinic_with(IDENTITY_SPEC))
    assert spec.identity.declared
    assert spec.identity.ids["chat"] == {"openid": "wechat_openid"}
    with pytest.raises(SpecError, match=r"identity\.ids\.orders"):
        parse_spec(_clinic_with('[identity.ids.orders]\n"x" = "phone"\n'))


def test_a_spec_without_ids_keeps_its_code_version_hash() -> None:
    """Declaring nothing is today's behaviour: the raw assets' code version is unchanged."""
    spec = load_spec("clinic")
    assert not spec.identity.declared
    import hashlib

    payload = json.dumps({"columns": spec.columns}, sort_keys=True, ensure_ascii=False)
    assert (
        spec.part_hash("columns")
        == f"spec-columns-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"
    )
    declared = parse_spec(_clinic_with(IDENTITY_SPEC))
    assert declared.part_hash("columns") != spec.part_hash("columns")
    keys = {
        a.key.to_user_string()
        for a in build_definitions(Settings(), spec).resolve_all_asset_specs()
    }
    assert PERSON_IDS not in keys


# -- the generated multi-id source ---------------------------------------------------------


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pl.DataFrame]]:
    tables = to_multi_id(sample_tables("clinic", 1000, 11, 3), 11)
    path = tmp_path_factory.mktemp("multi") / "source.duckdb"
    write_source(path, tables)
    return path, tables


def test_the_generated_source_has_three_id_types_and_shared_noise(thousand) -> None:
    _, tables = thousand
    assert "user_id" not in tables["sales"].columns and "user_id" not in tables["chat"].columns
    event_rows = sum(tables[t].height for t in ("sales", "behaviour"))
    noisy = (tables["sales"]["手机号"] == FRONT_DESK_PHONE).sum() + (
        tables["behaviour"]["设备号"] == STORE_TABLET
    ).sum()
    assert noisy / event_rows >= 0.02
    assert tables["users"]["会员号"].n_unique() >= 1000
    assert (
        tables["users"].height
        > tables["users"]["会员号"].str.strip_chars().str.to_uppercase().n_unique()
    )


def test_stitching_the_generated_source_scores_precision_099_recall_098(thousand) -> None:
    path, _ = thousand
    rules = parse_spec(_clinic_with(IDENTITY_SPEC)).identity
    empty = (pl.DataFrame(schema=NODE_SCHEMA), pl.DataFrame(schema=PERSON_SCHEMA))
    with open_source(path) as con:
        result, stitched, rows = stitch_source(con, rules, KEY, *empty, T0)
        truth = con.sql("SELECT * FROM truth_identity").pl()
        from profiling_assets.stores.identity import Stitching

        pairs = stitched_rows_against_truth(con, Stitching(rules, KEY, result.nodes), truth)
    precision, recall = pairwise_scores(pairs["predicted"], pairs["true"])
    print(
        json.dumps(
            {
                "rows": rows,
                "persons": result.persons.height,
                "precision": precision,
                "recall": recall,
            }
        )
    )
    assert precision >= 0.99 and recall >= 0.98
    assert set(stitched.excluded["id_type"]) == {"phone", "device_id"}  # the desk and the tablet
    assert stitched.oversize.height == 0


# -- the real chain ------------------------------------------------------------------------

OPENIDS = ("oPLANTEDopenid0000000000001", "oPLANTEDopenid0000000000002")
PHONES = ("13912340001", "13912340002")
COHORT = "2024-01"


def _multi_source(linked: bool) -> dict[str, pl.DataFrame]:
    """Two people: a member (number + phone) from the till and a mini-program sign-up
    (phone only), each with an openid in chat; `linked` adds the pair that says the sign-up's
    phone is the member's (a merge). Phones and openids planted everywhere."""
    users = pl.DataFrame(
        {
            "会员号": ["VIP1", None],
            "手机号": [f"+86 {PHONES[0]}", PHONES[1].replace("1391234", "139-1234-")],
            "gender": ["女", "女"],
            "age": [30, 31],
            "city": ["上海", "杭州"],
            "signup_date": ["2024-01-05", "2024-01-09"],
        }
    )
    sales = pl.DataFrame(
        {
            "order_id": ["o1", "o2"],
            "手机号": list(PHONES),
            "item": ["水光针", "热玛吉"],
            "category": ["皮肤项目", "皮肤项目"],
            "amount": [980.0, 12800.0],
            "order_date": ["2024-02-01", "2024-02-03"],
        }
    )
    behaviour = pl.DataFrame(
        {
            "event_id": ["e1", "e2"],
            "openid": list(OPENIDS),
            "event_type": ["浏览文章", "浏览文章"],
            "target": ["水光针维持多久", "热玛吉疼不疼"],
            "event_time": ["2024-02-01 10:00:00", "2024-02-02 11:00:00"],
        }
    )
    chat = pl.DataFrame(
        {
            "message_id": ["m1", "m2"],
            "openid": list(OPENIDS),
            "message": ["水光针多少钱？", "热玛吉有优惠吗？"],
            "sent_at": ["2024-02-01 10:05:00", "2024-02-02 10:05:00"],
            "channel": ["微信", "微信"],
        }
    )
    pairs = [("wechat_openid", OPENIDS[i], "phone", PHONES[i]) for i in range(2)]
    if linked:
        pairs.append(("member_no", "VIP1", "phone", PHONES[1]))
    identities = pl.DataFrame(
        pairs, schema=["id_type_a", "id_a", "id_type_b", "id_b"], orient="row"
    )
    return {
        "users": users,
        "sales": sales,
        "behaviour": behaviour,
        "chat": chat,
        "identities": identities,
    }


SMALL_IDENTITY = """
[identity]
[identity.ids.users]
"会员号" = "member_no"
"手机号" = "phone"
[identity.ids.sales]
"手机号" = "phone"
[identity.ids.behaviour]
"openid" = "wechat_openid"
[identity.ids.chat]
"openid" = "wechat_openid"
"""


class _Recorder:
    def __init__(self) -> None:
        self.prompts: list[Any] = []

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        self.prompts.append(body["messages"])
        return corpus.chat_reply(body, corpus.generic_profile_json())


def _run_everything(
    settings: Settings, instance: dg.DagsterInstance
) -> tuple[str, dg.ExecuteInProcessResult]:
    defs = build_definitions(settings)
    stitched = defs.resolve_job_def(STITCH_JOB).execute_in_process(instance=instance)
    assert stitched.success
    result = corpus.run_job(settings, COHORT, add_cohorts(instance, [COHORT]))
    assert result.success
    logs = "\n".join(str(e) for run in (stitched, result) for e in instance.all_logs(run.run_id))
    return logs, result


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("stitched")
    spec_file = data / "spec.toml"
    spec_file.write_text(resolve_spec_path("clinic").read_text("utf-8") + SMALL_IDENTITY, "utf-8")
    recorder = _Recorder()
    with OllamaLike(models=("qwen-test",), chat_handler=recorder) as server:
        settings = ollama_settings(
            data,
            server.url,
            spec=str(spec_file),
            id_key="a-secret-key-for-the-test-0123",
            llm_timeout_s=5.0,
            llm_max_retries=1,
        )
        instance = dg.DagsterInstance.ephemeral()
        write_source(settings.source_path, _multi_source(linked=False))
        first_logs, _ = _run_everything(settings, instance)
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            first = con.sql("SELECT user_id, profile_json FROM user_profiles").pl()
        write_source(settings.source_path, _multi_source(linked=True))
        second_logs, second = _run_everything(settings, instance)
    return settings, recorder, first, first_logs + second_logs, second


def test_each_row_is_keyed_on_its_stitched_person(two_runs) -> None:
    settings, _, first, _, _ = two_runs
    assert first["user_id"].n_unique() == 2 and all(u.startswith("p_") for u in first["user_id"])
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        chat = con.sql("SELECT user_id FROM chat").pl()
        documents = con.sql("SELECT user_id, markdown FROM user_documents").pl()
    assert set(chat["user_id"]) <= set(documents["user_id"])
    # The document says what it was built from (the merged person, after the second run):
    # counts per id type, never the ids.
    assert documents.height == 1
    assert (
        "注册，身份来源：会员号 1 个、手机号 2 个、微信 openid 2 个\n" in documents["markdown"][0]
    )


def test_no_planted_phone_or_openid_in_any_store_prompt_or_event(two_runs) -> None:
    settings, recorder, _, logs, _ = two_runs
    texts = corpus.store_texts(settings, recorder.prompts, logs)
    needles = [*PHONES, *OPENIDS, "VIP1", "VIP2", "1234-0002"]
    found = sorted((store, n) for store, text in texts.items() for n in needles if n in text)
    assert any(s.startswith("warehouse.identity_nodes") for s in texts)
    assert recorder.prompts and "dagster_event_log" in texts
    assert found == []
    # The parquet map other processes read holds hashes only as well.
    nodes = pl.read_parquet(settings.identity_map_path)
    assert not [n for n in needles if any(n in v for v in nodes["node"])]
    assert re.fullmatch(r"(member_no|phone|wechat_openid):[a-z2-7]{16}", nodes["node"][0])


def test_a_merge_across_runs_keeps_one_id_and_its_history(two_runs) -> None:
    settings, _, first, _, _ = two_runs
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        merges = con.sql("SELECT merged_person_id, person_id FROM person_merges").pl()
        persons = con.sql("SELECT person_id, id_counts FROM persons").pl()
        profiles = con.sql("SELECT user_id, created_at FROM user_profiles").pl()
        users = con.sql("SELECT user_id FROM users").pl()
    assert merges.height == 1
    merged, survivor = merges.row(0)
    assert {merged, survivor} == set(first["user_id"])
    assert persons["person_id"].to_list() == [survivor]
    assert json.loads(persons["id_counts"][0]) == {"member_no": 1, "phone": 2, "wechat_openid": 2}
    assert users["user_id"].to_list() == [survivor]  # two users rows folded into one
    # History follows: both earlier profiles now belong to the survivor, no row is left
    # under the merged id, and the latest profile is one row.
    assert set(profiles["user_id"]) == {survivor}
    assert profiles.height >= 2


def test_diff_shows_the_merged_history(
    two_runs, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    settings, _, _, _, _ = two_runs
    from profiling_assets.commands.cli import main

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        survivor = con.sql("SELECT person_id FROM persons").pl()["person_id"][0]
    monkeypatch.setenv("PROFILING_DATA_DIR", str(settings.data_dir))
    assert main(["diff", survivor]) == 0
    assert survivor in capsys.readouterr().out


def test_stitching_refuses_to_run_without_a_key(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(resolve_spec_path("clinic").read_text("utf-8") + SMALL_IDENTITY, "utf-8")
    settings = Settings(data_dir=tmp_path, spec=str(spec_file))
    write_source(settings.source_path, _multi_source(linked=False))
    defs = build_definitions(settings)
    result = defs.resolve_job_def(STITCH_JOB).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "PROFILING_ID_KEY" in str(failure.event_specific_data)
    with pytest.raises(IdentityKeyError):
        load_stitching(load_spec(spec_file).identity, "", settings.identity_map_path)


def test_folded_users_rows_are_counted_as_read(two_runs) -> None:
    """Two users rows of one person arrive as one: the check still accounts for both."""
    second = two_runs[4]
    users = next(
        m for m in second.get_asset_materialization_events() if m.asset_key == dg.AssetKey("users")
    ).materialization.metadata
    assert (users["num_read"].value, users["num_accepted"].value) == (2, 1)
    assert users["num_merged"].value == 1
    checks = {c.check_name: c for c in second.get_asset_check_evaluations()}
    assert checks["rows_accounted_for"].passed


def test_a_row_without_a_usable_id_is_rejected_with_that_reason(tmp_path: Path) -> None:
    from profiling_assets.commands.source_check import inspect_source

    tables = _multi_source(linked=False)
    tables["chat"] = pl.concat(
        [
            tables["chat"],
            pl.DataFrame(
                {
                    "message_id": ["m9"],
                    "openid": ["null"],
                    "message": ["你好"],
                    "sent_at": ["2024-02-03 10:00:00"],
                    "channel": ["微信"],
                }
            ),
        ]
    )
    write_source(tmp_path / "s.duckdb", tables)
    rules = parse_spec(_clinic_with(SMALL_IDENTITY)).identity
    report = inspect_source(tmp_path / "s.duckdb", identity=(rules, KEY))
    chat = next(t for t in report.tables if t.table == "chat")
    assert chat.num_rejected == 1
    assert list(chat.reasons) == ["行内没有可用的身份 id（为空、占位值或在 identity.deny 中）"]
    # The stored row says a value was there but is no id (not a bare null, not the value).
    assert report.first_rejected[0].text.startswith("m9,[无效 id],你好,")
    assert report.stitching is not None and report.stitching.num_persons == 2


def test_doctor_says_when_the_key_is_missing(tmp_path: Path) -> None:
    from profiling_assets.commands.doctor import check_spec

    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(resolve_spec_path("clinic").read_text("utf-8") + SMALL_IDENTITY, "utf-8")
    missing = check_spec(Settings(data_dir=tmp_path, spec=str(spec_file)))
    assert [(f.topic, f.ok, f.blocking) for f in missing][1] == ("身份拼接密钥", False, True)
    assert "PROFILING_ID_KEY" in missing[1].detail
    given = check_spec(Settings(data_dir=tmp_path, spec=str(spec_file), id_key="k" * 20))
    assert given[1].ok and "users" in given[1].detail
    assert len(check_spec(Settings(data_dir=tmp_path))) == 1  # no ids declared: no finding


def test_sensors_stitch_on_a_source_change_and_wait_for_people(tmp_path: Path) -> None:
    from profiling_assets.partitions import new_cohorts

    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(resolve_spec_path("clinic").read_text("utf-8") + SMALL_IDENTITY, "utf-8")
    settings = Settings(data_dir=tmp_path, spec=str(spec_file), id_key="k" * 20)
    write_source(settings.source_path, _multi_source(linked=False))
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("identity_sensor")
    assert sensor.job_name == STITCH_JOB
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert len(first.run_requests) == 1
        same = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        assert same.run_requests == [] and same.skip_message
    # Cohorts are those of stitched people: none before the first stitching, then theirs.
    assert new_cohorts(settings, set()) == ([], [])
    defs.resolve_job_def(STITCH_JOB).execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert new_cohorts(settings, set()) == ([COHORT], [])


def test_demo_and_eval_stop_in_one_sentence_without_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from profiling_assets.commands.demo import run_demo
    from profiling_assets.commands.evaluate import EXIT_BAD_SOURCE, run_eval

    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(resolve_spec_path("clinic").read_text("utf-8") + SMALL_IDENTITY, "utf-8")
    settings = Settings(data_dir=tmp_path / "data", spec=str(spec_file))
    write_source(settings.source_path, _multi_source(linked=False))
    assert run_demo(settings, users=2, seed=1, months=1) == 1
    assert run_eval(settings, settings.source_path, tmp_path / "eval") == EXIT_BAD_SOURCE
    out = capsys.readouterr().out
    assert out.count("请设置环境变量 PROFILING_ID_KEY") == 2 and "Traceback" not in out


@pytest.mark.parametrize(("people", "shared"), [(3, False), (4, True)])
def test_the_shared_id_limit_is_exact(people: int, shared: bool) -> None:
    """`max_people_per_id = 3`: a phone on 3 members' rows still joins; on 4 it is set aside
    (counted rule only: no id type declared one-per-person here)."""
    rules = Identity(ids={"users": {"member": "member_no"}}, max_people_per_id=3, one_per_person=[])
    rows = [{"member": f"M{i}", "phone": "139 5710 8866", "openid": None} for i in range(people)]
    nodes, stitched = _graph(rows, COLUMNS, rules)
    assert (len(set(_people(nodes, stitched.components))) == people) is shared
    assert stitched.excluded.height == int(shared)
