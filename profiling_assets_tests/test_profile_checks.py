"""When a batch of failures is an outage of the model server, not a batch of bad users."""

from __future__ import annotations

import pytest

from profiling_assets.core.profiling import ProfileOutcome, server_outage


def _failed(*kinds: str) -> ProfileOutcome:
    return ProfileOutcome("u", None, error="x", attempt_kinds=kinds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcomes", "outage"),
    [
        ([], False),
        ([_failed("transport", "transport"), _failed("transport")], True),
        # One user's answer arrived (bad or not): the server is up.
        ([_failed("transport"), _failed("transport", "bad_answer")], False),
        ([_failed("transport"), _failed("bad_answer")], False),
        ([_failed()], False),  # failed before any attempt: no evidence of an outage
    ],
)
def test_an_outage_is_every_attempt_of_every_user_a_transport_error(
    outcomes: list[ProfileOutcome], outage: bool
) -> None:
    assert server_outage(outcomes) is outage
