"""What each migration locks, and for how long, on a day of bars: `python -m bench.migration_locks`.

Loads `--days` trading days x `--symbols` x 390 minutes of 1-minute bars at schema 0001 (COPY, as
`bench.queries` does), then applies 0002, 0003 and 0004 one by one with `infra.migrate.up`, reverts
them (`infra.migrate.down`, 0004 then 0003 then 0002) and applies them again. During each step:

- a watcher polls `pg_locks` every few milliseconds for the backend that holds the migration's
  advisory lock, recording every relation lock it holds (relation, mode) and when it first saw it;
  PostgreSQL keeps table locks to the end of the transaction, so a lock is held from then until
  the step returns (each file commits in one transaction, `infra.migrate._run`);
- a writer upserts one bar into `ohlcv_1min` every 20 ms (the bar sink's statement shape) and a
  reader selects one bar by key, and their longest wait during the step is recorded: how long
  the flows' writes and the gateway's reads stall while the migration runs.

Numbers, not assertions: prints a table per step and writes `bench/migration_locks.json`, with the
load average before and after (the machine may be busy: lock waits scale with the step's time).
Plain PostgreSQL only: the embedded TimescaleDB takes one session at a time, so no watcher can
look at its locks (docs/operations.md says what differs on TimescaleDB).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench.ohlcv import cpu_model, load_average
from bench.queries import day_frame, symbol_names, trading_days
from infra import migrate
from infra.databases import ensure_database

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/tickstock_bench_migrations"
OUT = Path(__file__).with_name("migration_locks.json")
PROBE_INTERVAL_S = 0.02
PROBE_TIME = datetime(2023, 12, 29, 15, 0, tzinfo=UTC)  # before the loaded days: a row of the probes' own

# The advisory lock infra.migrate takes: classid = high 32 bits, objid = low 32 bits of the key.
_MIGRATOR = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid::bigint = %s AND objid::bigint = %s
"""
_HELD = """
SELECT coalesce(n.nspname || '.', '') || coalesce(c.relname, l.relation::text), c.relkind::text, l.mode
FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.pid = %s AND l.locktype = 'relation' AND l.granted AND coalesce(n.nspname, '') NOT IN ('pg_catalog', 'pg_toast')
"""


@dataclass
class Watch:
    """What one step locked (first seen, relative to its start) and how long the probes waited."""

    locks: dict[tuple[str, str, str], float] = field(default_factory=dict)
    write_max_s: float = 0.0
    read_max_s: float = 0.0
    probe_errors: list[str] = field(default_factory=list)
    started: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)


def _watch_locks(url: str, watch: Watch) -> None:
    key = migrate.LOCK_KEY
    with psycopg.connect(url, autocommit=True) as conn:
        while not watch.stop.is_set():
            row = conn.execute(_MIGRATOR, (key >> 32, key & 0xFFFFFFFF)).fetchone()
            if row is not None:
                now = time.perf_counter() - watch.started
                for name, kind, mode in conn.execute(_HELD, (row[0],)).fetchall():
                    watch.locks.setdefault((name, kind or "?", mode), now)
            time.sleep(0.003)


def _probe(url: str, watch: Watch, statement: str, attribute: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        n = 0
        while not watch.stop.is_set():
            n += 1
            began = time.perf_counter()
            try:
                conn.execute(statement, {"t": PROBE_TIME, "v": n})
            except psycopg.Error as exc:  # a table or view of the probe went away with a down step
                watch.probe_errors.append(f"{attribute}: {str(exc).strip().splitlines()[0]}")
                time.sleep(PROBE_INTERVAL_S)
                continue
            waited = time.perf_counter() - began
            setattr(watch, attribute, max(getattr(watch, attribute), waited))
            time.sleep(PROBE_INTERVAL_S)


_WRITE = (
    "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision)"
    " VALUES ('S0000', %(t)s, 10, 11, 9, 10, %(v)s, 10, 1, 0)"
    " ON CONFLICT (symbol, timestamp) DO UPDATE SET volume = excluded.volume, revision = ohlcv_1min.revision + 1"
)
_READ = "SELECT * FROM ohlcv_1min WHERE symbol = 'S0001' AND timestamp >= %(t)s ORDER BY timestamp LIMIT 1 -- %(v)s"


def inventory(url: str, script: Path) -> list[dict[str, str]]:
    """Every relation lock `script` takes, exactly: run it in a transaction that is rolled back, then read
    pg_locks for our own backend before the rollback (table locks are kept to the transaction's end)."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction(force_rollback=True):
        conn.execute(script.read_bytes())
        held = conn.execute(_HELD, (conn.info.backend_pid,)).fetchall()
    return sorted(({"relation": name, "kind": kind or "?", "mode": mode} for name, kind, mode in held),
                  key=lambda lock: (lock["relation"], lock["mode"]))  # fmt: skip


def timed_step(url: str, what: str, run, script: Path) -> dict[str, object]:  # type: ignore[no-untyped-def]
    exact = inventory(url, script)
    watch = Watch(started=time.perf_counter())
    threads = [
        threading.Thread(target=_watch_locks, args=(url, watch), daemon=True),
        threading.Thread(target=_probe, args=(url, watch, _WRITE, "write_max_s"), daemon=True),
        threading.Thread(target=_probe, args=(url, watch, _READ, "read_max_s"), daemon=True),
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)  # the probes are running before the step starts
    watch.started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - watch.started
    time.sleep(0.3)  # a probe blocked until the commit has finished by now
    watch.stop.set()
    for t in threads:
        t.join(30)
    locks = sorted(
        ({"relation": name, "kind": kind, "mode": mode, "held_s": round(elapsed - first, 3)}
         for (name, kind, mode), first in watch.locks.items()),
        key=lambda lock: (-lock["held_s"], lock["relation"]),  # type: ignore[operator]
    )  # fmt: skip
    seen = {(lock["relation"], lock["mode"]): lock["held_s"] for lock in locks}
    for lock in exact:  # how long: from when the watcher first saw it (absent: too short to be seen)
        lock["held_s"] = seen.get((lock["relation"], lock["mode"]))  # type: ignore[assignment]
    print(f"{what}: {elapsed:.2f} s; longest write wait {watch.write_max_s:.2f} s, read wait {watch.read_max_s:.2f} s")
    for lock in exact:
        if lock["kind"] in ("r", "v", "m", "p"):  # tables and views; indexes and sequences follow their table
            held = "(not seen)" if lock["held_s"] is None else f"{lock['held_s']:.3f} s"
            print(f"    {lock['mode']:<24} {lock['relation']:<34} {held:>10}")
    return {
        "step": what,
        "seconds": round(elapsed, 3),
        "write_max_wait_s": round(watch.write_max_s, 3),
        "read_max_wait_s": round(watch.read_max_s, 3),
        "probe_errors": sorted(set(watch.probe_errors))[:5],
        "locks": exact,
    }


def load(url: str, days: int, symbols: int, minutes: int) -> None:
    migrate.down(url, to=0, log=lambda _: None)
    migrate.up(url, to=1, log=lambda _: None)
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor().copy("COPY symbols (symbol) FROM STDIN") as copy:
            for name in symbol_names(symbols):
                copy.write_row((name,))
        for n, day in enumerate(trading_days(days)):
            text = day_frame(n, day, symbols, minutes).write_csv(include_header=False, datetime_format="%Y-%m-%d %H:%M:%S+00")
            with conn.cursor().copy(
                "COPY ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades) FROM STDIN (FORMAT csv)"
            ) as copy:
                copy.write(text)
        conn.execute("VACUUM ANALYZE ohlcv_1min")
        conn.execute("VACUUM ANALYZE symbols")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migration_locks", description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--symbols", type=int, default=4000)
    parser.add_argument("--minutes", type=int, default=390)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    url = args.database_url
    ensure_database(url)
    began = time.perf_counter()
    load(url, args.days, args.symbols, args.minutes)
    rows = args.days * args.symbols * args.minutes
    print(f"loaded {rows:,} bars at schema 0001 in {time.perf_counter() - began:.0f} s", flush=True)
    quiet = {"log": lambda _: None}
    load_before = load_average()
    steps = []
    files = {m.version: m for m in migrate.discover()}
    for phase in ("up", "down", "up again"):
        versions = (2, 3, 4) if phase != "down" else (3, 2, 1)
        for v in versions:
            if phase == "down":
                script = files[v + 1].down
                assert script is not None
                run = lambda v=v: migrate.down(url, to=v, **quiet)  # noqa: E731
                steps.append(timed_step(url, f"down {v + 1:04d}", run, script))
            else:
                run = lambda v=v: migrate.up(url, to=v, **quiet)  # noqa: E731
                steps.append(timed_step(url, f"{phase} {v:04d}", run, files[v].up))
    result = {
        "rows": rows,
        "symbols": args.symbols,
        "days": args.days,
        "steps": steps,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cpu_model": cpu_model(),
        "server": "plain PostgreSQL",
    }
    with psycopg.connect(url, autocommit=True) as conn:
        result["server_version"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before {load_before}, after {result['load_average_after']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
