"""The embedded TimescaleDB (infra/timescale/server.mjs: PGlite with TimescaleDB 2.23) as a local server.

    python -m infra.embedded_timescale start [--port 5433] [--data-dir DIR] [--wait-s 60]
    python -m infra.embedded_timescale stop
    python -m infra.embedded_timescale url        the URL of the running one

`start` launches the Node.js server in the background (log in .run/timescale.log, pid in
.run/timescale.pid), waits until it answers a query with the extension in place, prints its URL
and how long that took; a server this command started that still answers is reused. `stop` ends
only the process in the pid file, and only if it is that server. `EmbeddedTimescale` does the
same for a caller that wants a private one (a test fixture: port 0 takes a free port).

The server serves one client session at a time and one database (infra/timescale/server.mjs says
what a client gets): a client must close its connection for the next one to be served.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import psycopg

from connectors.unavailable import ServiceUnavailable

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "infra" / "timescale" / "server.mjs"
PACKAGES = ROOT / "infra" / "timescale" / "node_modules" / "@unni-craftsman" / "pglite"
RUN_DIR = ROOT / ".run"
PID_FILE = RUN_DIR / "timescale.pid"
URL_FILE = RUN_DIR / "timescale.url"
LOG_FILE = RUN_DIR / "timescale.log"
DEFAULT_PORT = 5433
_instances = itertools.count()
_LISTENING = re.compile(r"^listening (?P<host>[^\s:]+):(?P<port>\d+)$", re.MULTILINE)


class TimescaleUnavailable(ServiceUnavailable):
    """The embedded server cannot be installed or started here; the message says why and what to do."""

    service = "the embedded TimescaleDB"


def url_for(host: str, port: int) -> str:
    """What a client passes: any user and password are accepted, one must be sent; one database."""
    return f"postgresql://postgres:postgres@{host}:{port}/postgres?sslmode=disable"


def answers(url: str, timeout_s: int = 3) -> str | None:
    """The TimescaleDB version if a server at `url` answers with the extension in place, else None."""
    try:
        with psycopg.connect(url, connect_timeout=timeout_s, autocommit=True) as conn:
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    except psycopg.Error:
        return None
    return None if row is None else str(row[0])


class EmbeddedTimescale:
    """One server process: `start()` returns once it answers, `stop()` ends it (also as a context manager)."""

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        data_dir: Path | None = None,
        log_file: Path | None = None,
        wait_s: float = 60.0,
        queue_timeout_s: float = 30.0,
    ) -> None:
        self.host, self.port, self.data_dir, self.wait_s = host, port, data_dir, wait_s
        self.queue_timeout_s = queue_timeout_s
        # a log of its own (kept when the server fails, removed when it stops cleanly)
        self._own_log = log_file is None
        self.log_file = log_file or RUN_DIR / f"timescale-{os.getpid()}-{next(_instances)}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self.version: str | None = None
        self.startup_s: float | None = None

    def start(self) -> str:
        node = shutil.which("node")
        if node is None:
            raise TimescaleUnavailable("Node.js is not installed: run `bash infra/timescale.sh` (installs Debian's npm as root)")
        if not PACKAGES.is_dir():
            raise TimescaleUnavailable(f"{PACKAGES.relative_to(ROOT)} is missing: run `bash infra/timescale.sh`")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        command = [node, str(SERVER), "--host", self.host, "--port", str(self.port),
                   "--queue-timeout-s", str(self.queue_timeout_s)]  # fmt: skip
        if self.data_dir is not None:
            command += ["--data-dir", str(self.data_dir)]
        began = time.monotonic()
        with self.log_file.open("wb") as log:
            # its own session: Ctrl-C in a terminal that runs `make test` does not reach it half-way
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = began + self.wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TimescaleUnavailable(f"the server exited ({self.process.returncode}): {self._log_tail()}")
            match = _LISTENING.search(self.log_file.read_text(errors="replace"))
            if match:
                self.url = url_for(match["host"], int(match["port"]))
                self.version = answers(self.url, timeout_s=max(1, int(deadline - time.monotonic())))
                if self.version is not None:
                    self.startup_s = time.monotonic() - began
                    return self.url
            time.sleep(0.05)
        self.stop()
        raise TimescaleUnavailable(f"the server did not answer within {self.wait_s:.0f} s: {self._log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # closes the database (flushes a data directory)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)
        if self._own_log and self.process.returncode == 0:
            self.log_file.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-lines:]) or "(no output)"
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# --- the shared local server of `make timescale` ----------------------------------------------------


def _running_pid() -> int | None:
    """The pid in PID_FILE if that process is alive and is our server, else None."""
    try:
        pid = int(PID_FILE.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(SERVER).encode() in cmdline else None


def start(
    port: int, data_dir: Path | None, wait_s: float, queue_timeout_s: float = 30.0, log: Callable[[str], None] = print
) -> str:
    pid = _running_pid()
    if pid is not None and URL_FILE.exists():
        url = URL_FILE.read_text().strip()
        version = answers(url)
        if version is not None:
            log(f"timescale: TimescaleDB {version} answering at {url} (already running, pid {pid})")
            return url
        raise TimescaleUnavailable(f"pid {pid} runs the server but it does not answer at {url}; `make timescale-stop`")
    server = EmbeddedTimescale(port=port, data_dir=data_dir, log_file=LOG_FILE, wait_s=wait_s, queue_timeout_s=queue_timeout_s)
    url = server.start()
    assert server.process is not None
    PID_FILE.write_text(f"{server.process.pid}\n")
    URL_FILE.write_text(f"{url}\n")
    where = f"data in {data_dir}" if data_dir else "data in memory"
    log(
        f"timescale: TimescaleDB {server.version} answering at {url} after {server.startup_s:.1f} s"
        f" ({where}; one client at a time; log {LOG_FILE.relative_to(ROOT)}; `make timescale-stop` stops it)"
    )
    return url


def stop(log: Callable[[str], None] = print) -> None:
    pid = _running_pid()
    if pid is None:
        log("timescale: no server of ours running")
        PID_FILE.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if _running_pid() is None:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
    PID_FILE.unlink(missing_ok=True)
    URL_FILE.unlink(missing_ok=True)
    log(f"timescale: stopped pid {pid}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.embedded_timescale", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "url"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("TIMESCALE_PORT", DEFAULT_PORT)),
                        help="TCP port on 127.0.0.1 (default TIMESCALE_PORT or 5433; 0: a free one)")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, help="keep the database files here (default: in memory)")
    parser.add_argument("--wait-s", type=float, default=60.0, help="how long to wait for it to answer")
    parser.add_argument("--queue-timeout-s", type=float, default=30.0,
                        help="how long a second client waits for the session before it is refused")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            start(args.port, args.data_dir, args.wait_s, args.queue_timeout_s)
        elif args.command == "stop":
            stop()
        else:
            if _running_pid() is None or not URL_FILE.exists():
                print("error: no embedded TimescaleDB of ours is running (`make timescale`)", file=sys.stderr)
                return 1
            print(URL_FILE.read_text().strip())
    except TimescaleUnavailable as exc:
        print(f"error: timescale: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
