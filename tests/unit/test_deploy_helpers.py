"""The two helpers the deployment files run: a process's own recovery partition, and the health check."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import healthcheck, recovery


def test_each_process_gets_its_own_partition_and_keeps_it(tmp_path: Path) -> None:
    pods = [tmp_path / f"pod-{i}" for i in range(3)]
    for i, pod in enumerate(pods):
        assert recovery.ensure_partition(pod, 3, i) is True
        assert sorted(p.name for p in pod.iterdir()) == [f"part-{i}.sqlite3"]  # no scratch left behind
    before = (pods[1] / "part-1.sqlite3").stat()
    assert recovery.ensure_partition(pods[1], 3, 1) is False  # a restarted pod resumes from its own
    after = (pods[1] / "part-1.sqlite3").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_volume_of_another_process_or_process_count_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recovery.ensure_partition(tmp_path, 2, 0)
    with pytest.raises(recovery.RecoveryLayoutError, match=r"holds recovery partition\(s\) \[0\], not \[1\] of 2"):
        recovery.ensure_partition(tmp_path, 2, 1)
    assert recovery.main([str(tmp_path), "--processes", "3", "--process-id", "2"]) == 1
    assert "process count changed" in capsys.readouterr().err
    assert recovery.main([str(tmp_path), "--processes", "2", "--process-id", "2"]) == 2  # outside 0..1


def test_the_process_id_follows_bytewax_rules() -> None:
    assert recovery.process_id({}) == 0
    assert recovery.process_id({"BYTEWAX_PROCESS_ID": "3"}) == 3
    assert (
        recovery.process_id({"BYTEWAX_POD_NAME": "tickstock-bar-flow-4", "BYTEWAX_STATEFULSET_NAME": "tickstock-bar-flow"}) == 4
    )
    with pytest.raises(ValueError, match="not BYTEWAX_STATEFULSET_NAME"):
        recovery.process_id({"BYTEWAX_POD_NAME": "other-1", "BYTEWAX_STATEFULSET_NAME": "tickstock-bar-flow"})


def test_the_pod_ordinal_picks_the_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYTEWAX_POD_NAME", "flow-1")
    monkeypatch.setenv("BYTEWAX_STATEFULSET_NAME", "flow")
    assert recovery.main([str(tmp_path / "new"), "--processes", "2"]) == 0
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["part-1.sqlite3"]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 503
        body = b'{"ready": false, "kafka": "unreachable"}' if status == 503 else b"{}"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_health_check_passes_on_2xx_and_says_what_else_it_got(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main([f"{server}/healthz"]) == 0
    assert healthcheck.main([f"{server}/readyz"]) == 1
    assert "answered 503" in capsys.readouterr().err and healthcheck.check(f"{server}/readyz", 3) is not None
    assert "kafka" in str(healthcheck.check(f"{server}/readyz", 3))
    with pytest.raises(SystemExit):
        healthcheck.main(["127.0.0.1:1/healthz"])  # not a URL: a usage error


def test_the_health_check_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        problem = healthcheck.check(f"http://127.0.0.1:{port}/healthz", 1)
    assert problem is not None and "unreachable" in problem
