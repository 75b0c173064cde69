"""Benchmarks: commands that report numbers (tests assert behaviour, these measure it)."""
