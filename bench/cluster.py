"""A PostgreSQL 15 cluster of the benchmarks' own, and how "cold" is made on it and on the embedded TimescaleDB.

    python -m bench.cluster start|stop|url [--data-dir DIR] [--port 5439]

Why a cluster of its own: a cold read must miss PostgreSQL's shared buffers as well as the
kernel's page cache, and the bench can only empty shared buffers by restarting the server, which
it must never do to the shared one on 5432. This cluster (initdb from /usr/lib/postgresql/15/bin,
owned by the `postgres` user when run as root, on its own port, data in `--data-dir`, default
/var/lib/postgresql/tickstock-bench) has small shared buffers (16 MB, 2,048 pages), so the bench
restarts it at the start of every cold phase, and between cold samples it holds at most the
B-tree inner pages and the few leaf pages of the previous samples' other symbols.

The page cache: `/proc/sys/vm/drop_caches` is not writable here, so `evict()` asks the kernel to
drop the cached pages of every file of the database (`posix_fadvise(POSIX_FADV_DONTNEED)` after a
CHECKPOINT, so no page is dirty; clean pages go at once). Before each cold sample, every relation
file of the database is evicted (the table, its TOAST, every index, every 1 GB segment .1 .2 ...):
the query's reads then come from disk. Settings tuned for a bulk load that nobody else sees:
fsync and full_page_writes off (a crash loses the bench database, which `--reload` rebuilds).
"""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import psycopg

BIN = Path("/usr/lib/postgresql/15/bin")
DATA_DIR = Path("/var/lib/postgresql/tickstock-bench")
PORT = 5439
SETTINGS = {
    "shared_buffers": "16MB",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "1GB",
    "work_mem": "64MB",  # 0004 builds its rollup from the loaded bars with one grouped, sorted INSERT
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "'/tmp'",
    "autovacuum": "on",
}


class ClusterError(RuntimeError):
    """The bench cluster cannot be made or started here; the message says why."""


def _as_owner(command: list[str]) -> list[str]:
    """Run as `postgres` when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def url(port: int = PORT, dbname: str = "tickstock_bench_queries") -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{dbname}"


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_owner(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def init(data_dir: Path = DATA_DIR, port: int = PORT) -> None:
    """initdb once; (re)write our settings every time."""
    if not (BIN / "initdb").exists():
        raise ClusterError(f"{BIN}/initdb missing: install Debian's postgresql-15")
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(data_dir, owner.pw_uid, owner.pw_gid)
        _run([str(BIN / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions"])
    conf = "\n".join(f"{k} = {v}" for k, v in SETTINGS.items()) + f"\nport = {port}\n"
    target = data_dir / "postgresql.auto.conf"
    target.write_text(conf)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(target, owner.pw_uid, owner.pw_gid)


def running(data_dir: Path = DATA_DIR) -> bool:
    return (data_dir / "postmaster.pid").exists() and subprocess.run(
        _as_owner([str(BIN / "pg_ctl"), "-D", str(data_dir), "status"]), capture_output=True, check=False
    ).returncode == 0


def start(data_dir: Path = DATA_DIR, port: int = PORT) -> str:
    init(data_dir, port)
    if not running(data_dir):
        _run([str(BIN / "pg_ctl"), "-D", str(data_dir), "-l", str(data_dir / "server.log"), "-w", "-t", "120", "start"])
    for _ in range(100):
        try:
            with psycopg.connect(url(port, "postgres"), connect_timeout=3):
                return url(port)
        except psycopg.OperationalError:
            time.sleep(0.2)
    raise ClusterError(f"the bench cluster on port {port} does not answer; see {data_dir}/server.log")


def stop(data_dir: Path = DATA_DIR) -> None:
    if running(data_dir):
        _run([str(BIN / "pg_ctl"), "-D", str(data_dir), "-w", "-t", "300", "-m", "fast", "stop"])


def restart(data_dir: Path = DATA_DIR, port: int = PORT) -> str:
    """Empty shared buffers: the only way PostgreSQL 15 has."""
    stop(data_dir)
    return start(data_dir, port)


def relation_files(conn: psycopg.Connection, data_dir: Path) -> list[Path]:
    """Every file of every relation of the connected database (all forks, all 1 GB segments)."""
    rows = conn.execute(
        "SELECT pg_relation_filepath(c.oid) FROM pg_class c"
        " WHERE c.relkind IN ('r', 'i', 't', 'm', 'p', 'I') AND pg_relation_filepath(c.oid) IS NOT NULL"
    ).fetchall()
    files: list[Path] = []
    for (relative,) in rows:
        base = data_dir / relative
        files.extend(p for p in base.parent.glob(base.name + "*") if p.name == base.name or p.name[len(base.name)] in "._")
    return files


def evict(files: list[Path]) -> int:
    """Drop the page cache of `files` (clean pages go at once); returns the bytes asked for."""
    total = 0
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # a relation rewritten since it was listed
            continue
        try:
            total += os.fstat(fd).st_size
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return total


def data_files(data_dir: Path) -> list[Path]:
    """Every regular file under a data directory (the embedded TimescaleDB's, whose relation paths
    the bench does not ask for: its server is one session at a time)."""
    return [p for p in data_dir.rglob("*") if p.is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "url"])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(start(args.data_dir, args.port))
        elif args.command == "stop":
            stop(args.data_dir)
        else:
            print(url(args.port))
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
