"""When a flow's partition says it is degraded, and what its health line says.

Pure: counts and times in, a judgement out, so the rule is stated (and tested) here rather than
inside an operator.

>>> judge(received=1000, refused=60, interval_s=10, lag_s=1.0, max_lag_s=300)
'60 of 1000 events refused in the last 10 s'
>>> judge(received=1000, refused=50, interval_s=10, lag_s=301.0, max_lag_s=300)
'watermark lags the wall clock by 301 s'
>>> judge(received=1000, refused=50, interval_s=10, lag_s=301.0, max_lag_s=None) is None   # not tailing
True
>>> judge(received=0, refused=0, interval_s=10, lag_s=None, max_lag_s=300) is None
True
"""

from __future__ import annotations

from schemas.status import FlowHealth

MAX_REFUSED_SHARE = 0.05
"""More than this share of the interval's events refused marks the partition degraded."""


def judge(*, received: int, refused: int, interval_s: float, lag_s: float | None, max_lag_s: float | None) -> str | None:
    """Why the partition is degraded over the last interval, or None when it is healthy.

    Refusals first: a feed sending garbage is the more urgent news. The lag rule only holds for a
    tailing flow (`max_lag_s` None otherwise): a flow replaying history lags by design.
    """
    if received and refused > MAX_REFUSED_SHARE * received:
        return f"{refused} of {received} events refused in the last {interval_s:.0f} s"
    if lag_s is not None and max_lag_s is not None and lag_s > max_lag_s:
        return f"watermark lags the wall clock by {lag_s:.0f} s"
    return None


def health_line(h: FlowHealth) -> str:
    """The health message as one log line (the same numbers dashboards get on the status channel).

    >>> h = FlowHealth(partition="t#0", timestamp=0, status="healthy", received=5, events_per_s=0.5,
    ...                final_bars=1, open_bars=2, dropped=0, duplicates=0, revisions=0, symbols=2, held=0,
    ...                dead_letters={"malformed": 0})
    >>> health_line(h)
    'health t#0: healthy events=5 (0/s) final_bars=1 open_bars=2 symbols=2 duplicates=0 revisions=0 malformed=0 held=0 watermark_lag=-'
    """
    reason = f" ({h.reason})" if h.reason else ""
    letters = " ".join(f"{k}={v}" for k, v in (h.dead_letters or {}).items())
    lag = f"{h.watermark_lag_s:.1f}s" if h.watermark_lag_s is not None else "-"
    return (
        f"health {h.partition}: {h.status}{reason} events={h.received} ({h.events_per_s:.0f}/s) final_bars={h.final_bars} "
        f"open_bars={h.open_bars} symbols={h.symbols} duplicates={h.duplicates} revisions={h.revisions} {letters} "
        f"held={h.held} watermark_lag={lag}"
    )
