"""Typed records on the wire.

`polygon` holds the events Polygon (Massive) sends and that Kafka carries untouched;
`bars` holds what the system emits. Both are msgspec structs: they validate while they
decode, which keeps parsing off the hot path's budget (see README, "Why msgspec").
"""
