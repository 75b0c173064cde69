"""Kafka settings: where the broker is, the topics and how the flows consume them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from connectors.settings import CONFIG, NonBlank, matching

# Kafka's own rule for topic names: 1-249 of these characters, and not "." or "..".
TopicName = Annotated[
    str,
    matching(
        r"(?!\.{1,2}$)[A-Za-z0-9._-]{1,249}", "not a Kafka topic name (1-249 letters, digits, '.', '_', '-'; not '.' or '..')"
    ),
]


class KafkaSettings(BaseSettings):
    model_config = CONFIG

    kafka_bootstrap_servers: NonBlank = Field("127.0.0.1:9092", max_length=4096)
    topic_trades: TopicName = "stocks.trades"
    topic_quotes: TopicName = "stocks.quotes"
    topic_second_aggs: TopicName = "stocks.aggs.second"
    topic_minute_aggs: TopicName = "stocks.aggs.minute"
    topic_dead_letter: TopicName = "stocks.deadletter"
    topic_bars: TopicName = Field("stocks.bars.1m", description="final 1-minute bars and revisions, key = symbol (JSON)")
    topic_partitions: int = Field(4, ge=1, le=10_000, description="partitions per topic when we create them")
    kafka_batch_size: int = Field(10_000, ge=1, le=1_000_000, description="max messages per consume call")
    kafka_start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where a flow without recovery state starts, and where it resumes when its offset is no longer "
        "on the broker (deleted by retention, or the topic was recreated): logged and counted either way",
    )
    kafka_tail: bool = Field(True, description="keep waiting at the end of the topic; false = stop at EOF")

    def topics(self) -> list[str]:
        """Every topic the system uses, for creation at set-up."""
        return [
            self.topic_trades,
            self.topic_quotes,
            self.topic_second_aggs,
            self.topic_minute_aggs,
            self.topic_dead_letter,
            self.topic_bars,
        ]
