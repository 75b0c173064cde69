"""`flows.boundary.wait_after_boundary`: bars read just after a minute closes wait until the window ends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flows.boundary import MINUTE_S, wait_after_boundary


@given(
    now=st.floats(min_value=1.6e9, max_value=2.0e9),
    delay=st.floats(min_value=0, max_value=30),
    hold=st.floats(min_value=0, max_value=30),
)
def test_the_wait_ends_where_the_window_after_a_close_ends_and_is_zero_outside_it(now, delay, hold):
    wait = wait_after_boundary(now, close_delay_s=delay, hold_s=hold)
    since_close = (now - delay) % MINUTE_S  # how long ago the last minute closed
    assert 0 <= wait <= hold
    if since_close < hold:
        assert abs(since_close + wait - hold) < 1e-6  # waits exactly to the window's end
    else:
        assert wait == 0


def test_no_hold_never_waits():
    assert wait_after_boundary(1_764_000_002.0, close_delay_s=2.0, hold_s=0) == 0
