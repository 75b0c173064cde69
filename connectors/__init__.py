"""Thin adapters around the real clients (confluent-kafka, psycopg, redis) and the feeds."""
