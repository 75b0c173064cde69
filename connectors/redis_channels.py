"""The Redis channel names, in one place (the catalog in README documents each)."""

from __future__ import annotations


class Channels:
    """Channel names under a namespace (default `tickstock`, the old system's prefix)."""

    def __init__(self, namespace: str = "tickstock") -> None:
        self.namespace = namespace
        self.ohlcv = f"{namespace}.market.ohlcv"  # final bars and revisions, every symbol
        self.live = f"{namespace}.market.bars.live"  # forming bars, every symbol

    def ohlcv_for(self, symbol: str) -> str:
        return f"{self.ohlcv}.{symbol}"

    def live_for(self, symbol: str) -> str:
        return f"{self.live}.{symbol}"
