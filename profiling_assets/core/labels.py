"""The Chinese label set: profile signals scored by the embedder, and the truth vocabulary.

Each description is written the way a user of that label talks or behaves, not as a
definition: the embedder compares it with the user's own words and browsing, so
user-like language lands nearer to the evidence than a dictionary gloss would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LabelKind = Literal["project", "concern", "tag"]
LABEL_KINDS: tuple[LabelKind, ...] = ("project", "concern", "tag")

SPENDING_LEVELS: tuple[str, ...] = ("低", "中", "高")
PURCHASE_INTENTS: tuple[str, ...] = ("低", "中", "高")

# Anomalies the sample data plants and the profile may report (truth vocabulary only).
ANOMALIES: tuple[str, ...] = ("退款后又大额下单", "短时间内大量重复咨询", "异常大额消费")


@dataclass(frozen=True)
class Label:
    kind: LabelKind
    name: str
    description: str

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"label {self.name!r}: kind {self.kind!r} is not one of {LABEL_KINDS}")
        if not self.name or not self.description:
            raise ValueError("a label needs a name and a description")


def _project(name: str, description: str) -> Label:
    return Label("project", name, description)


def _concern(name: str, description: str) -> Label:
    return Label("concern", name, description)


def _tag(name: str, description: str) -> Label:
    return Label("tag", name, description)


PROJECTS: tuple[Label, ...] = (
    _project("全切双眼皮", "我是肿眼泡、眼皮松，想开刀做切开的双眼皮，要宽一点、管得久"),
    _project("埋线双眼皮", "不想开刀，想做埋线那种恢复快的双眼皮，担心会不会掉线"),
    _project("祛眼袋", "眼袋越来越明显，看着显老没精神，想把眼下鼓包去掉"),
    _project("开眼角", "眼睛小、眼裂短，想开内眼角或外眼角让眼睛显得大一些"),
    _project("隆鼻", "鼻梁塌、山根低，想垫高鼻子，在比较假体和肋软骨"),
    _project("玻尿酸填充", "法令纹、泪沟、苹果肌凹陷，想打玻尿酸填充一下"),
    _project("热玛吉", "脸开始松垮、下颌线不清晰，想做热玛吉射频紧致抗衰"),
    _project("光子嫩肤", "脸上泛红、有红血丝、暗沉，想做光子嫩肤让皮肤亮一点"),
    _project("皮肤管理", "经常长痘、闭口黑头多，想定期做清洁补水的皮肤管理"),
    _project("水光针", "皮肤干、上妆卡粉没光泽，想打水光针补水让皮肤透亮"),
    _project("激光祛斑", "脸上有雀斑、晒斑、色沉，想用激光或皮秒把斑去掉"),
)

CONCERNS: tuple[Label, ...] = (
    _concern("恢复期", "担心做完要肿多久、多久能消肿见人，要请几天假"),
    _concern("价格", "问项目多少钱、有没有优惠活动、能不能分期付款"),
    _concern("安全风险", "担心手术或麻醉出意外、产品是不是正规的、失败了怎么办"),
    _concern("疼痛", "特别怕疼，问做的时候疼不疼、能不能全麻或敷麻"),
    _concern("医生资质", "想知道主刀医生是谁、有没有资质、做过多少案例"),
    _concern("效果自然", "不想看起来假，想要自然、别人看不出来做过的效果"),
    _concern("修复", "以前做的效果不满意或做坏了，想修复或二次调整"),
    _concern("副作用", "担心后遗症、过敏、反黑、并发症这些副作用"),
    _concern("维持时间", "想知道效果能维持多久、多久需要补做一次"),
)

TAGS: tuple[Label, ...] = (
    _tag("价格敏感", "总在比价、问优惠券和团购，嫌贵，等有活动才下单"),
    _tag("高消费", "花钱大方，做的都是几万元的项目，要最好的医生和材料"),
    _tag("复购客户", "同一个项目反复来做，说还是按上次那样给我安排"),
    _tag("犹豫观望", "问了很多但一直说再考虑考虑、再对比一下，迟迟不下单"),
    _tag("注重安全", "反复确认机构资质、手术室和产品是否正规有保障"),
    _tag("追求自然", "只想微调，要妈生感，不想让人看出来动过"),
    _tag("学生党", "还在上学，预算有限，想趁寒暑假做，问学生优惠"),
    _tag("职场白领", "工作忙只能下班或周末来，怕请假、怕同事看出来"),
    _tag("颜值焦虑", "对自己的外貌很不满意，拍照自卑，总觉得自己显老不好看"),
    _tag("忠实客户", "在这家做了很多次，是老会员，一直很信任这里"),
)

LABELS: tuple[Label, ...] = PROJECTS + CONCERNS + TAGS


def labels_of(kind: LabelKind) -> tuple[Label, ...]:
    """The labels of one kind, in declaration order."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"unknown label kind {kind!r}; expected one of {LABEL_KINDS}")
    return tuple(label for label in LABELS if label.kind == kind)


def label_names(kind: LabelKind) -> tuple[str, ...]:
    """The names of the labels of one kind, in declaration order."""
    return tuple(label.name for label in labels_of(kind))


# Neutral passages in the documents' own shape: the label scores are calibrated against them
# (see core/signals.py). A fixed set, not the cohort's chunks, so one user's new data never
# shifts every other user's scores (and so never re-profiles them).
BACKGROUND_PASSAGES: tuple[str, ...] = (
    "## 基础信息\n- 女，30 岁，常住上海，2025-01-05 注册",
    "## 基础信息\n- 男，41 岁，常住成都，2025-02-11 注册",
    "## 用户发言\n- 2025-03-02 在微信说：“好的，谢谢”",
    "## 用户发言\n- 2025-03-04 在小程序说：“你们门店几点关门？”",
    "## 用户发言\n- 2025-03-05 在电话说：“停车方便吗，地址发我一下”",
    "## 用户发言\n- 2025-03-06 在微信说：“收到，我看一下”",
    "## 用户发言\n- 2025-03-07 在微信说：“[图片]”",
    "## 用户发言\n- 2025-03-08 在微信说：“周末有人吗”",
    "## 用户发言\n- 2025-03-09 在小程序说：“会员积分怎么用？”",
    "## 用户发言\n- 2025-03-10 在微信说：“我再考虑考虑”",
    "## 浏览行为\n- 浏览文章：《门店开业公告》（2025-03-01）",
    "## 浏览行为\n- 浏览文章：《会员日活动说明》（2025-03-03）",
    "## 浏览行为\n- 浏览视频：《门店环境介绍》（2025-03-04）",
    "## 浏览行为\n- 搜索：门店地址（2025-03-05）",
    "## 浏览行为\n- 收藏：《交通指引》（2025-03-06）",
    "## 消费记录\n### 其他消费\n- 项目：防晒霜；金额：199 元；日期：2025-03-02",
    "## 消费记录\n### 其他消费\n- 项目：洗面奶；金额：89 元；日期：2025-03-08",
    "## 消费记录\n### 皮肤项目消费\n- 项目：基础清洁；金额：168 元；日期：2025-03-12",
    "## 用户发言\n- 2025-03-11 在微信说：“发票怎么开？”\n- 2025-03-11 在微信说：“好的”",
    "## 浏览行为\n- 浏览文章：《节假日营业时间》（2025-03-12）\n- 查看医生主页：王医生",
)
