"""Records that cross a boundary between stages (pydantic: validated where they land)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Chunk(Record):
    chunk_id: str
    user_id: str
    cohort: str
    position: int
    heading_path: str = Field(description="e.g. `消费记录 > 医美项目消费`")
    text: str = Field(description="The chunk as embedded: its heading lines, then list items.")
    source_ids: list[str] = Field(
        default_factory=list, description="Ids of the source rows whose lines the chunk holds."
    )


class EvidenceItem(Record):
    """One chunk retrieved for one user and one profile question."""

    user_id: str
    question_id: str
    chunk_id: str
    rank: int = Field(ge=1, description="1 = best after reranking")
    retrieval_score: float
    rerank_score: float
    heading_path: str
    text: str


class LabelCandidate(Record):
    """A label scored by the embedder over a user's evidence, handed to the LLM to confirm."""

    kind: str = Field(description="tag | project | concern")
    label: str
    score: float
    chunk_id: str = Field(description="The best-matching chunk: the citation.")


class UserFacts(Record):
    """Computed in code from the tables; never asked of the LLM."""

    user_id: str
    cohort: str
    as_of: date
    gender: str | None = None
    age: int | None = None
    city: str | None = None
    total_spend: float = 0.0
    order_count: int = 0
    first_purchase: date | None = None
    last_purchase: date | None = None
    days_since_last_purchase: int | None = None
    days_since_last_activity: int | None = None
    purchase_frequency_per_month: float = 0.0
    monetary_avg: float = 0.0
    categories: list[str] = Field(default_factory=list)
    items: list[str] = Field(default_factory=list)
    rfm_segment: str = ""
    spending_level: Literal["低", "中", "高"] = Field("低", description="By the spec's thresholds.")
    browse_count: int = 0
    chat_count: int = 0
    recent_order_count: int = 0
    recent_browse_count: int = 0
    recent_chat_count: int = 0
