"""The live bridge: Massive (Polygon) stocks WebSocket -> Kafka, one record per event, key = symbol.

Run it with ``python -m connectors.feeds.bridge``. Read it in this order:
- `settings`: its variables (the feed, the in-flight window, timeouts, the spool directory);
- `frames`: a WebSocket frame split into events without trusting it (never raises);
- `session`: one WebSocket session at a time, with timeouts, reconnected forever with backoff;
- `relay`: `Bridge`, which turns each frame into records (dead letters for what is not an event);
- `publish`: the Kafka producer, the window, failed deliveries produced again or dead-lettered;
- `spool`: what Kafka had not taken at a stop, produced first at the next start;
- `health`: the counters and health line; `backoff`: the delays between attempts;
- `program`: `main()`, the exit codes.
"""
