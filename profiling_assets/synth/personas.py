"""Hidden personas: what each synthetic user really wants, which the data then only hints at.

The draws keep a persona coherent (a 学生党 is young and not a big spender, a 复购客户 has
repeat orders, a 高消费 user spends at the 高 level), because an incoherent truth would
make evaluation measure noise instead of the pipeline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from profiling_assets.core.spec import load_spec

# The clinic generator writes in the vocabulary of the shipped clinic spec (tests check every
# planted name is one of its labels); `synth/from_spec.py` generates for any other spec.
CLINIC_SPEC = load_spec("clinic")
CATEGORY_AESTHETIC = "医美项目"
CATEGORY_SKIN = "皮肤项目"
# Anomalies this generator plants: names of the clinic spec's anomaly rules.
ANOMALIES: tuple[str, ...] = ("退款后又大额下单", "短时间内大量重复咨询", "异常大额消费")
_FIELD_OF_KIND = {"tag": "tags", "concern": "concerns", "project": "intended_projects"}


def label_names(kind: str) -> tuple[str, ...]:
    """The clinic spec's label names of one kind (project / concern / tag)."""
    return CLINIC_SPEC.label_names(_FIELD_OF_KIND[kind])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Item:
    """A sellable project: its category and a realistic price range in 元."""

    name: str
    category: str
    low: int
    high: int


CATALOGUE: dict[str, Item] = {
    item.name: item
    for item in (
        Item("全切双眼皮", CATEGORY_AESTHETIC, 6000, 12000),
        Item("埋线双眼皮", CATEGORY_AESTHETIC, 3000, 6000),
        Item("祛眼袋", CATEGORY_AESTHETIC, 5000, 10000),
        Item("开眼角", CATEGORY_AESTHETIC, 4000, 9000),
        Item("隆鼻", CATEGORY_AESTHETIC, 10000, 30000),
        Item("玻尿酸填充", CATEGORY_AESTHETIC, 2000, 6000),
        Item("热玛吉", CATEGORY_AESTHETIC, 12000, 25000),
        Item("光子嫩肤", CATEGORY_SKIN, 800, 2000),
        Item("皮肤管理", CATEGORY_SKIN, 200, 800),
        Item("水光针", CATEGORY_SKIN, 800, 2000),
        Item("激光祛斑", CATEGORY_SKIN, 1000, 3000),
    )
}

CHEAP_ITEMS = ("皮肤管理", "光子嫩肤", "水光针", "激光祛斑")
MID_ITEMS = ("埋线双眼皮", "玻尿酸填充", "开眼角", "祛眼袋", "激光祛斑")
PREMIUM_ITEMS = ("全切双眼皮", "隆鼻", "热玛吉", "祛眼袋")

# Which projects a user of each spending level tends to be considering.
_PROJECT_WEIGHTS: dict[str, dict[str, float]] = {
    "低": {
        "皮肤管理": 5,
        "水光针": 3,
        "光子嫩肤": 3,
        "激光祛斑": 2,
        "埋线双眼皮": 2,
        "玻尿酸填充": 1,
    },
    "中": {
        "埋线双眼皮": 3,
        "全切双眼皮": 2,
        "祛眼袋": 2,
        "开眼角": 2,
        "玻尿酸填充": 3,
        "水光针": 2,
        "光子嫩肤": 2,
        "激光祛斑": 2,
        "皮肤管理": 1,
    },
    "高": {"全切双眼皮": 3, "隆鼻": 3, "热玛吉": 3, "祛眼袋": 2, "开眼角": 1, "玻尿酸填充": 1},
}

# Concerns that only make sense for some projects.
_LASTING_PROJECTS = frozenset({"埋线双眼皮", "玻尿酸填充", "热玛吉", "水光针", "光子嫩肤"})
_REPAIRABLE_PROJECTS = frozenset({"全切双眼皮", "埋线双眼皮", "祛眼袋", "开眼角", "隆鼻"})

# Tags that cannot hold together.
_EXCLUSIVE = (frozenset({"价格敏感", "高消费"}), frozenset({"学生党", "职场白领"}))

CITIES = (
    "北京", "上海", "广州", "深圳", "杭州", "成都", "重庆", "武汉", "南京", "西安",
    "长沙", "苏州", "天津", "郑州", "青岛", "厦门", "昆明", "合肥", "沈阳", "福州",
)  # fmt: skip
CITY_WEIGHTS = (9, 9, 7, 7, 6, 6, 5, 5, 5, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2)


@dataclass(frozen=True)
class Persona:
    user_id: str
    gender: str
    age: int
    city: str
    intended_project: str
    spending_level: str
    purchase_intent: str
    concerns: tuple[str, ...]
    tags: tuple[str, ...]
    anomalies: tuple[str, ...]


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def _draw_tags(rng: random.Random, spending: str, intent: str, project: str) -> list[str]:
    """2–4 tags, coherent with spending level and intent."""
    tags: list[str] = []
    if spending == "高" and rng.random() < 0.7:
        tags.append("高消费")
    if spending == "低" and rng.random() < 0.6:
        tags.append("价格敏感")
    if intent == "低" and rng.random() < 0.6:
        tags.append("犹豫观望")
    eligible = [t for t in label_names("tag") if _tag_allowed(t, spending, intent, project)]
    wanted = rng.randint(2, 4)
    for tag in rng.sample(eligible, len(eligible)):
        if len(tags) >= wanted:
            break
        if tag not in tags and not _conflicts(tag, tags):
            tags.append(tag)
    return tags


def _tag_allowed(tag: str, spending: str, intent: str, project: str) -> bool:
    if tag == "高消费":
        return spending == "高"
    if tag == "价格敏感":
        return spending != "高"
    if tag == "学生党":
        return spending != "高" and project != "热玛吉"
    if tag == "犹豫观望":
        return intent != "高"
    return True


def _conflicts(tag: str, chosen: list[str]) -> bool:
    return any(tag in group and group & set(chosen) for group in _EXCLUSIVE)


def _draw_concerns(rng: random.Random, project: str, tags: list[str]) -> list[str]:
    """1–3 concerns, nudged by tags (a 价格敏感 user asks about 价格)."""
    implied = {"价格敏感": "价格", "注重安全": "安全风险", "追求自然": "效果自然"}
    concerns = [implied[t] for t in tags if t in implied and rng.random() < 0.8]
    pool = [c for c in label_names("concern") if _concern_allowed(c, project)]
    wanted = max(len(concerns), rng.randint(1, 3))
    for concern in rng.sample(pool, len(pool)):
        if len(concerns) >= wanted:
            break
        if concern not in concerns:
            concerns.append(concern)
    return concerns[:3]


def _concern_allowed(concern: str, project: str) -> bool:
    if concern == "维持时间":
        return project in _LASTING_PROJECTS
    if concern == "修复":
        return project in _REPAIRABLE_PROJECTS
    return True


def _draw_anomalies(rng: random.Random, spending: str) -> list[str]:
    """About one user in twenty carries one anomaly.

    Large-order anomalies go only to 中/高 spenders, so the planted spending level stays true.
    """
    if rng.random() >= 0.05:
        return []
    choices = list(ANOMALIES) if spending != "低" else ["短时间内大量重复咨询"]
    return [rng.choice(choices)]


def _draw_age(rng: random.Random, tags: list[str], project: str) -> int:
    if "学生党" in tags:
        return rng.randint(18, 23)
    if "职场白领" in tags:
        return rng.randint(24, 40)
    if project == "热玛吉":
        return rng.randint(30, 52)
    return min(58, max(18, round(rng.gauss(29, 7))))


def draw_persona(rng: random.Random, user_id: str) -> Persona:
    spending = rng.choices(("低", "中", "高"), weights=(35, 45, 20))[0]
    intent = rng.choices(("低", "中", "高"), weights=(30, 45, 25))[0]
    project = _weighted(rng, _PROJECT_WEIGHTS[spending])
    tags = _draw_tags(rng, spending, intent, project)
    concerns = _draw_concerns(rng, project, tags)
    return Persona(
        user_id=user_id,
        gender=rng.choices(("女", "男"), weights=(88, 12))[0],
        age=_draw_age(rng, tags, project),
        city=rng.choices(CITIES, weights=CITY_WEIGHTS)[0],
        intended_project=project,
        spending_level=spending,
        purchase_intent=intent,
        concerns=tuple(concerns),
        tags=tuple(tags),
        anomalies=tuple(_draw_anomalies(rng, spending)),
    )
