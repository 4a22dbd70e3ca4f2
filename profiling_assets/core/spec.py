"""The business spec: everything that makes profiles fit one company, as a validated TOML file.

Sales categories and their `### …消费` sections, label groups (projects, concerns, tags …
each label with a description in the customers' own voice and aliases), spending levels,
purchase-intent and anomaly rules over computed facts, the evidence questions and the
vocabulary mode. Loaded and validated before anything runs; an error names the file, the
field and what is wrong. Each asset's `code_version` carries the hash of exactly the parts
it reads (`ProfileSpec.part_hash`), so a spec change is a backfill like a model upgrade.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from profiling_assets.core.conditions import Condition, ConditionError, parse_condition
from profiling_assets.core.text import has_cjk

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
DEFAULT_SPEC = "clinic"

Level = Literal["低", "中", "高"]
LEVELS: tuple[Level, ...] = ("低", "中", "高")
ProfileListField = Literal["tags", "intended_projects", "concerns", "signals"]
# The profile field each built-in group id fills when a group does not say.
DEFAULT_FIELD_OF_GROUP: dict[str, ProfileListField] = {
    "project": "intended_projects",
    "concern": "concerns",
    "tag": "tags",
}
OTHER_SALES_HEADING = "其他消费"

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Ident = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
LabelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10)]

_ASCII_LETTER = re.compile(r"[A-Za-z]")
_MARKUP = re.compile(r"[#*`|<>\[\]：:=]")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file, the field and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_heading(title: str) -> str:
    """A document heading as the golden structure wants it: Chinese, short, no markup."""
    if not has_cjk(title) or _ASCII_LETTER.search(title):
        raise ValueError(f"标题必须是中文且不含英文字母：{title!r}")
    if _MARKUP.search(title) or len(title) > 12:
        raise ValueError(f"标题不能含 Markdown 符号或冒号，且最多 12 个字：{title!r}")
    return title


class Business(_Strict):
    name: Text
    kind: Text = Field(description="行业，例如 医美诊所 / 护肤品网店")
    currency: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4)]
    description: Annotated[str, StringConstraints(strip_whitespace=True, min_length=4)] = Field(
        description="一两句话介绍业务，写进提示词"
    )


class SalesSection(_Strict):
    heading: Text = Field(description="### 小节标题，以“消费”结尾")
    categories: list[Text] = Field(min_length=1, description="归入该小节的 sales.category 值")

    @field_validator("heading")
    @classmethod
    def _heading_rules(cls, value: str) -> str:
        check_heading(value)
        if not value.endswith("消费"):
            raise ValueError(f"消费小节标题应以“消费”结尾：{value!r}")
        if value == OTHER_SALES_HEADING:
            raise ValueError(f"“{OTHER_SALES_HEADING}”留给未知类别，不能再声明")
        return value


class CatalogueItem(_Strict):
    """A sellable item: its category and price range (the sample generator uses them, and a
    purchase of an item that names a label counts as evidence for that label)."""

    name: Text
    category: Text
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    label: str = Field("", description="该商品对应的标签名（可选）")

    @model_validator(mode="after")
    def _range(self) -> CatalogueItem:
        if self.low > self.high:
            raise ValueError(f"商品 {self.name}：low {self.low} 大于 high {self.high}")
        return self


class Label(_Strict):
    name: LabelName
    description: Annotated[str, StringConstraints(strip_whitespace=True, min_length=4)] = Field(
        description="用客户自己的口吻描述，嵌入模型拿它去比对用户的话"
    )
    aliases: list[Text] = Field(default_factory=list, description="客户会直接说出的叫法/关键词")
    examples: list[Text] = Field(
        default_factory=list, description="客户原话示例（只给样例数据生成器用，不参与打分）"
    )
    requires: str = Field("", description="该标签成立所需的事实条件，如 order_count >= 2")

    @field_validator("requires")
    @classmethod
    def _parse_requires(cls, value: str) -> str:
        if value.strip():
            try:
                parse_condition(value)
            except ConditionError as exc:
                raise ValueError(str(exc)) from None
        return value.strip()

    @property
    def condition(self) -> Condition | None:
        return parse_condition(self.requires) if self.requires else None

    @property
    def keywords(self) -> tuple[str, ...]:
        """What counts as the customer naming the label literally: name and aliases."""
        return tuple(dict.fromkeys([self.name, *self.aliases]))


class LabelGroup(_Strict):
    id: Ident
    name: Text = Field(description="中文组名，用在提示词和报告里")
    field: ProfileListField | None = Field(
        None,
        description="填入画像的哪个字段：tags / intended_projects / concerns；"
        "signals = 只给规则用，不直接写进画像",
    )
    labels: list[Label] = Field(min_length=1)

    @property
    def profile_field(self) -> ProfileListField:
        return self.field or DEFAULT_FIELD_OF_GROUP.get(self.id, "tags")


class Spending(_Strict):
    mode: Literal["fixed", "quantile"] = "fixed"
    high: float | None = Field(None, gt=0, description="fixed：累计消费 ≥ high 为 高")
    mid: float | None = Field(None, gt=0, description="fixed：累计消费 ≥ mid 为 中")
    high_quantile: float | None = Field(None, gt=0, lt=1)
    mid_quantile: float | None = Field(None, gt=0, lt=1)
    top: float | None = Field(None, gt=0, description="报告里“大额”分桶的下限（可选）")

    @model_validator(mode="after")
    def _thresholds(self) -> Spending:
        if self.mode == "fixed":
            if self.high is None or self.mid is None:
                raise ValueError("mode = fixed 需要 high 和 mid")
            if not self.mid < self.high:
                raise ValueError(f"阈值顺序错误：mid {self.mid} 应小于 high {self.high}")
        else:
            if self.high_quantile is None or self.mid_quantile is None:
                raise ValueError("mode = quantile 需要 high_quantile 和 mid_quantile")
            if not self.mid_quantile < self.high_quantile:
                raise ValueError(
                    f"分位数顺序错误：mid_quantile {self.mid_quantile} 应小于 "
                    f"high_quantile {self.high_quantile}"
                )
        if self.top is not None and self.high is not None and self.top <= self.high:
            raise ValueError(f"top {self.top} 应大于 high {self.high}")
        return self


class IntentRule(_Strict):
    level: Level
    when: Text = Field(description="条件，如 recent_chat_count >= 3 and label == 准备预约")
    reason: Text = Field(description="中文理由，写进画像的依据说明")

    @field_validator("when")
    @classmethod
    def _parse_when(cls, value: str) -> str:
        try:
            parse_condition(value)
        except ConditionError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def condition(self) -> Condition:
        return parse_condition(self.when)


class Intent(_Strict):
    rules: list[IntentRule] = Field(
        default_factory=list, description="按顺序，第一条成立的规则定级"
    )
    default: Level | None = Field(None, description="没有规则成立时的等级；空 = 交给模型判断")


class _AnomalyBase(_Strict):
    name: LabelName = Field(description="写进画像“异常”字段的名称")


class RefundThenLargeOrder(_AnomalyBase):
    """Refunds rarely reach a sales export (negative amounts are rejected as invalid rows), so
    a refund is what the customer says or searches: a chat message or behaviour target."""

    kind: Literal["refund_then_large_order"]
    refund_keywords: list[Text] = Field(min_length=1, description="聊天/行为里表示退款的词")
    within_days: int = Field(ge=1, le=365)
    min_amount: float = Field(gt=0, description="退款后这么多天内的一单 ≥ 此金额")


class MessageBurst(_AnomalyBase):
    kind: Literal["message_burst"]
    min_messages: int = Field(ge=2)
    within_hours: float = Field(gt=0, le=24 * 90)


class LargeOrder(_AnomalyBase):
    kind: Literal["large_order"]
    ratio: float = Field(gt=1, description="单笔订单金额 ≥ ratio × 基准中位数")
    baseline: Literal["user_median", "cohort_median"] = Field(
        "cohort_median",
        description="cohort_median：本批次所有订单单笔金额的中位数；user_median：该用户其他订单"
        "单笔金额的中位数（少于 3 单的用户不判）",
    )
    min_amount: float = Field(0, ge=0, description="同时至少这么多钱（避免小额误报）")


class Keywords(_AnomalyBase):
    kind: Literal["keywords"]
    keywords: list[Text] = Field(min_length=1)
    tables: list[Literal["chat", "behaviour"]] = Field(default_factory=lambda: ["chat"])


AnomalyRule = Annotated[
    RefundThenLargeOrder | MessageBurst | LargeOrder | Keywords, Field(discriminator="kind")
]


class Question(_Strict):
    id: Ident
    dimension: Text = Field(description="服务的画像字段，如 关注点")
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=6)]


class Facts(_Strict):
    recent_days: int = Field(30, ge=1, le=365, description="recent_* 事实的统计窗口（天）")


# Id types with their own normalisation (others are only trimmed): see `core.identity`.
KNOWN_ID_TYPES = ("phone", "member_no", "wechat_openid", "wechat_unionid", "device_id", "email")
IDENTITY_TABLES = ("users", "sales", "behaviour", "chat", "truth")


class Identity(_Strict):
    """Which source columns are ids of which type; rows sharing an id are one person."""

    ids: dict[str, dict[str, Ident]] = Field(
        default_factory=dict,
        description='按表声明身份列及其类型：[identity.ids.chat] openid = "wechat_openid"',
    )
    max_people_per_id: int = Field(
        3,
        ge=1,
        le=1000,
        description="一个 id 值连着的另一类 id 超过这么多个时视为共享 id（前台电话），不参与拼接",
    )
    max_component_size: int = Field(
        50, ge=2, description="一个人最多由这么多个 id 组成；更大的连通块不合并并报告"
    )
    deny: list[Text] = Field(
        default_factory=list, description="永不参与拼接的 id 值（前台电话、测试号等）"
    )
    one_per_person: list[Ident] = Field(
        default_factory=lambda: ["member_no", "wechat_openid", "wechat_unionid", "user_id"],
        description="每人只有一个的 id 类型：一个 id 连着其中某类的两个不同值，"
        "就是被几个人共用的 id",
    )

    @field_validator("ids")
    @classmethod
    def _ids_name_tables(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for table, columns in value.items():
            if table not in IDENTITY_TABLES:
                known = ", ".join(IDENTITY_TABLES)
                raise ValueError(f"identity.ids.{table}：未知的表；可用：{known}")
            if not columns:
                raise ValueError(f"identity.ids.{table}：至少声明一列")
        return value

    @property
    def declared(self) -> bool:
        return bool(self.ids)


class Intake(_Strict):
    """Rules of reading the source that depend on the business."""

    max_amount: float = Field(
        500_000, gt=0, description="单笔金额上限（元）；更大的视为录入错误，进 rejected_rows"
    )


class ProfileSpec(_Strict):
    spec_version: Literal[1] = 1
    business: Business
    vocabulary: Literal["closed", "open"] = Field(
        "closed", description="closed：只用规格里的标签；open：模型可另加标签，会被标明"
    )
    sales_sections: list[SalesSection] = Field(min_length=1)
    catalogue: list[CatalogueItem] = Field(default_factory=list)
    label_groups: list[LabelGroup] = Field(min_length=1)
    spending: Spending
    facts: Facts = Facts()
    intent: Intent = Intent()
    anomalies: list[AnomalyRule] = Field(default_factory=list)
    questions: list[Question] = Field(min_length=1)
    columns: dict[str, dict[str, Text]] = Field(
        default_factory=dict,
        description='按表把公司自己的列名映射到标准列：[columns.sales] order_date = "下单时间"',
    )
    identity: Identity = Identity()
    intake: Intake = Intake()

    @field_validator("columns")
    @classmethod
    def _columns_name_the_contract(
        cls, value: dict[str, dict[str, str]]
    ) -> dict[str, dict[str, str]]:
        from profiling_assets.core.contract import SOURCE_TABLES, TRUTH_COLUMNS, TRUTH_TABLE

        known = {name: table.names for name, table in SOURCE_TABLES.items()}
        known[TRUTH_TABLE] = list(TRUTH_COLUMNS)
        for table, mapping in value.items():
            if table not in known:
                raise ValueError(f"columns.{table}：未知的表；可用：{', '.join(known)}")
            for column in mapping:
                if column not in known[table]:
                    raise ValueError(
                        f"columns.{table}.{column}：不是标准列；可用：{', '.join(known[table])}"
                    )
            _unique(f"columns.{table}", list(mapping.values()))
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> ProfileSpec:
        _unique("sales_sections.heading", [s.heading for s in self.sales_sections])
        _unique("sales_sections.categories", [c for s in self.sales_sections for c in s.categories])
        _unique("label_groups.id", [g.id for g in self.label_groups])
        names = [label.name for g in self.label_groups for label in g.labels]
        _unique("label_groups.labels.name", names)
        known = set(names)
        for group in self.label_groups:
            for label in group.labels:
                clash = [a for a in label.aliases if a in known and a != label.name]
                if clash:
                    raise ValueError(f"标签 {label.name} 的别名 {clash[0]} 与另一个标签同名")
        for i, rule in enumerate(self.intent.rules):
            missing = [n for n in rule.condition.labels if n not in known]
            if missing:
                raise ValueError(f"intent.rules[{i}] 引用了未声明的标签：{missing[0]}")
        _unique("anomalies.name", [a.name for a in self.anomalies])
        _unique("questions.id", [q.id for q in self.questions])
        _unique("catalogue.name", [i.name for i in self.catalogue])
        for item in self.catalogue:
            if item.label and item.label not in known:
                raise ValueError(f"catalogue 商品 {item.name} 的 label {item.label} 未声明")
        return self

    # --- lookups ----------------------------------------------------------------------------
    @property
    def labels(self) -> list[tuple[LabelGroup, Label]]:
        return [(g, label) for g in self.label_groups for label in g.labels]

    def group(self, group_id: str) -> LabelGroup:
        for g in self.label_groups:
            if g.id == group_id:
                return g
        raise KeyError(group_id)

    def label_names(self, field: ProfileListField) -> tuple[str, ...]:
        """Names of every label that fills one profile field, in declaration order."""
        return tuple(lb.name for g, lb in self.labels if g.profile_field == field)

    def label(self, name: str) -> Label | None:
        return next((lb for _, lb in self.labels if lb.name == name), None)

    @property
    def section_of_category(self) -> dict[str, str]:
        return {c: s.heading for s in self.sales_sections for c in s.categories}

    @property
    def sales_headings(self) -> tuple[str, ...]:
        return (*(s.heading for s in self.sales_sections), OTHER_SALES_HEADING)

    @property
    def anomaly_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.anomalies)

    # --- code versions ----------------------------------------------------------------------
    def part_hash(self, part: SpecPart) -> str:
        """Hash of the spec fields one asset reads: a change elsewhere leaves it fresh."""
        fields = set(SPEC_PARTS[part])
        # Sections left at their defaults hash as they did before the sections existed.
        if not self.identity.declared:
            fields.discard("identity")
        if self.intake == Intake():
            fields.discard("intake")
        payload = self.model_dump(mode="json", include=fields)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())
        return f"spec-{part}-{digest.hexdigest()[:12]}"


SpecPart = Literal["columns", "documents", "questions", "profiles", "segments", "report", "quality"]
# Which top-level spec fields each asset reads; `part_hash` hashes exactly these.
SPEC_PARTS: dict[SpecPart, tuple[str, ...]] = {
    "columns": ("columns", "identity", "intake"),
    "documents": ("sales_sections", "business"),
    "questions": ("questions",),
    "profiles": (
        "business",
        "vocabulary",
        "catalogue",
        "label_groups",
        "spending",
        "facts",
        "intent",
        "anomalies",
    ),
    "segments": ("label_groups",),
    "report": ("business", "spending", "label_groups"),
    "quality": ("label_groups", "anomalies"),
}


def _unique(field: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{field} 重复：{value}")
        seen.add(value)


def resolve_spec_path(spec: str | Path | None) -> Path:
    """A shipped spec's short name (`clinic`, `skincare_shop`) or a path; default: clinic."""
    if spec is None or str(spec) == "":
        return SPECS_DIR / f"{DEFAULT_SPEC}.toml"
    text = str(spec)
    shipped = SPECS_DIR / f"{text}.toml"
    if "/" not in text and not text.endswith(".toml") and shipped.exists():
        return shipped
    return Path(text)


STARTER_SPEC = SPECS_DIR / "_starter.toml"


def shipped_specs() -> dict[str, Path]:
    """The specs that ship with the package, by short name (the starter template is not one)."""
    return {p.stem: p for p in sorted(SPECS_DIR.glob("*.toml")) if not p.stem.startswith("_")}


def parse_spec(data: dict[str, Any], source: str = "<spec>") -> ProfileSpec:
    try:
        return ProfileSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"  - {where or '（顶层）'}: {message}")
        header = f"业务规格 {source} 有 {len(problems)} 处错误：\n"
        raise SpecError(header + "\n".join(problems)) from None


def load_spec(spec: str | Path | None = None) -> ProfileSpec:
    """Read and validate a spec file; `SpecError` names the file, field and problem."""
    path = resolve_spec_path(spec)
    if not path.is_file():
        names = ", ".join(shipped_specs())
        raise SpecError(f"找不到业务规格文件 {path}（自带的规格：{names}）")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"业务规格 {path} 不是合法的 TOML：{exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"业务规格 {path} 不是 UTF-8 编码") from None
    return parse_spec(data, str(path))


def spec_summary(spec: ProfileSpec) -> str:
    """What `profiling-assets spec check` prints: groups, counts, thresholds, rules."""
    s = spec.spending
    if s.mode == "fixed":
        spending = f"固定阈值：高 ≥ {s.high:g} {spec.business.currency}，中 ≥ {s.mid:g}"
    else:
        spending = f"按批次分位数：高 ≥ P{s.high_quantile:.0%}，中 ≥ P{s.mid_quantile:.0%}"
    lines = [
        f"业务：{spec.business.name}（{spec.business.kind}，货币 {spec.business.currency}）",
        f"词表模式：{spec.vocabulary}",
        "消费小节：" + "、".join(f"### {h}" for h in spec.sales_headings),
        "标签组：",
        *(
            f"  - {g.id}（{g.name} → {g.profile_field}）：{len(g.labels)} 个标签，"
            f"{sum(len(lb.aliases) for lb in g.labels)} 个别名"
            for g in spec.label_groups
        ),
        f"消费能力：{spending}",
        f"购买意向规则：{len(spec.intent.rules)} 条；默认：{spec.intent.default or '模型判断'}",
        *(f"  - {r.level}：{r.when}" for r in spec.intent.rules),
        f"异常规则：{len(spec.anomalies)} 条",
        *(f"  - {a.name}（{a.kind}）" for a in spec.anomalies),
        f"证据问题：{len(spec.questions)} 个（{', '.join(q.id for q in spec.questions)}）",
        f"商品目录：{len(spec.catalogue)} 项",
        f"单笔金额上限：{spec.intake.max_amount:g} {spec.business.currency}",
        _identity_summary(spec.identity),
    ]
    return "\n".join(lines)


def _identity_summary(identity: Identity) -> str:
    if not identity.declared:
        return "身份拼接：未声明 id（各表以 user_id 关联）"
    tables = "；".join(
        f"{table}：" + "、".join(f"{column}={kind}" for column, kind in columns.items())
        for table, columns in identity.ids.items()
    )
    return (
        f"身份拼接：{tables}；共享 id 上限 {identity.max_people_per_id}，"
        f"连通块上限 {identity.max_component_size}，拒绝列表 {len(identity.deny)} 个值"
    )
