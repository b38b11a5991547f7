"""The GCRA arithmetic: rate and burst never let a window hold more than the limit."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.limits.budget import Budget, Priority
from app.limits.gcra import EXOTEL_SEND_SLACK

MINUTE = timedelta(minutes=1)


@pytest.mark.parametrize("slack_s", [0, 1, 2, 7.5])
def test_no_window_of_any_limit_can_hold_more_than_the_limit(slack_s: float) -> None:
    slack = timedelta(seconds=slack_s)
    for limit in range(1, 1001):
        budget = Budget.keeping(limit, send_slack=slack)
        # Places granted over a minute plus the slack are what one minute may receive.
        assert budget.most_in(MINUTE + slack) <= limit, limit
        assert budget.most_in(MINUTE + slack + budget.interval) > limit, "not needlessly slow"


def test_exotels_default_budget_goes_at_175_a_minute_after_a_burst_of_20() -> None:
    budget = Budget.keeping(200, send_slack=EXOTEL_SEND_SLACK)

    assert budget.burst == 20
    assert 175 <= budget.per_minute < 176
    assert budget.most_in(MINUTE + EXOTEL_SEND_SLACK) == 200
    # Background work uses half the burst at most: the other half stays for placing.
    assert budget.background_burst == 10
    assert budget.tolerance(Priority.BACKGROUND) == budget.interval * 10
    assert budget.tolerance(Priority.PLACING) == budget.interval * 20


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Budget.keeping(0)
