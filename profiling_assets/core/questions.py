"""The profile questions: one per profile dimension, each retrieving its own evidence set.

They come from the business spec (`[[questions]]`), worded as a customer's situation rather
than as labels, since e5/BGE-style retrievers match questions against passages written in
the users' own words.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiling_assets.core.spec import ProfileSpec


@dataclass(frozen=True)
class ProfileQuestion:
    question_id: str
    dimension: str  # the UserProfile fields this evidence serves
    text: str


def questions_from_spec(spec: ProfileSpec) -> tuple[ProfileQuestion, ...]:
    return tuple(ProfileQuestion(q.id, q.dimension, q.text) for q in spec.questions)
