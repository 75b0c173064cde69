"""Bytewax dataflows and the domain logic they compose.

Domain modules (`conditions`, `bars`, `book`) know nothing of Kafka, Redis or SQL;
`ohlcv` wires them to the connectors.
"""
