"""The feeds: where market data comes from, each a program that publishes into Kafka.

- `bridge`: the live Massive (Polygon) WebSocket -> Kafka (``python -m connectors.feeds.bridge``);
- `synthetic`: a deterministic synthetic feed with the anomalies the flows must survive
  (``python -m connectors.feeds.synthetic``);
- `flat_files`: Polygon's flat files (history) read and checked as feed events;
- `replay`: those files published into Kafka (``python -m connectors.feeds.replay``).

They share the Kafka client pieces of `connectors.kafka` (settings, producer, dead letters,
error judgement) and the definitions of `schemas`; they never import the flows.
"""
