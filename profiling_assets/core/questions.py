"""The profile questions: one per profile dimension, each retrieving its own evidence set.

Worded as a user's situation rather than as labels, since e5/BGE-style retrievers match
questions against passages written in the users' own words.
"""

from __future__ import annotations

from dataclasses import dataclass

QUESTIONS_VERSION = "q1"


@dataclass(frozen=True)
class ProfileQuestion:
    question_id: str
    dimension: str  # the UserProfile fields this evidence serves
    text: str


PROFILE_QUESTIONS: tuple[ProfileQuestion, ...] = (
    ProfileQuestion(
        "spending",
        "消费能力",
        "用户买过哪些项目，花了多少钱，消费金额和频次如何？",
    ),
    ProfileQuestion(
        "projects",
        "意向项目 / 兴趣摘要",
        "用户想做或正在咨询哪些医美或皮肤项目，比如双眼皮、眼袋、玻尿酸、皮肤管理？",
    ),
    ProfileQuestion(
        "concerns",
        "关注点",
        "用户担心什么：恢复期、价格、疼痛、安全风险、医生资质还是效果是否自然？",
    ),
    ProfileQuestion(
        "intent",
        "购买意向 / 下一步行动",
        "用户最近是否想预约、下单、问价格或优惠，有没有明确的购买时间？",
    ),
    ProfileQuestion(
        "interests",
        "行为画像",
        "用户浏览和收藏了哪些文章、视频、医生主页，搜索过什么？",
    ),
    ProfileQuestion(
        "recommendation",
        "推荐理由",
        "根据用户已做过的项目和需求，还适合推荐什么项目或护理？",
    ),
    ProfileQuestion(
        "anomalies",
        "异常",
        "用户有没有异常：退款、投诉、不满、短时间大量重复咨询、异常大额或可疑的要求？",
    ),
)
