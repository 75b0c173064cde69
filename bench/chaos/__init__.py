"""`make chaos`: hostile input and failing dependencies, against the real broker, PostgreSQL and Redis.

Two halves, both reported in `bench/chaos.json` and a table:

- `fuzz`: property-based (hypothesis) and mutation fuzzing of every decoder that takes outside
  data, counting per decoder the records it accepted, refused the documented way, and the
  uncaught exceptions (crashes), plus `violations`: outputs the rest of the pipeline cannot
  live with (a watermark moved years ahead, a dead letter over the producer's size limit, a
  replayed event that is not JSON, ...).
- `scenarios`: a live synthetic feed while both flows tail their topics with recovery stores,
  with one fault each (kill -9, broker / PostgreSQL / Redis outage behind a TCP proxy, poison
  records), compared with the independent bar oracle (`tests.support.reference`) over exactly the
  records published and with an uninterrupted run of both flows over the same input.

The flows are driven only through their entry points (`python -m bytewax.run ...`) and the
environment variables of `flows/settings.py`, so the harness keeps working as they change.
"""
