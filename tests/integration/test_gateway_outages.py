"""Dependencies that fail under a running gateway: Redis errors of every kind, PostgreSQL down, and
background tasks that die. Real servers: a private redis-server per test (the shared one is never
touched) and a TCP proxy in front of the shared PostgreSQL that the test cuts and restores.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import httpx
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from redis.backoff import NoBackoff
from redis.retry import Retry

from connectors.redis.publish import RedisUnavailable
from flows.settings import Settings
from tests.support.gateway import WAIT_S, Client, live_bar, pattern, running_gateway
from tests.support.proxy import KafkaProxy
from tests.support.services import TEST_DATABASE_URL, free_port, private_redis

pytestmark = pytest.mark.integration

REDIS_URL = Settings().redis_url


def wait_for(condition, what: str, timeout: float = WAIT_S, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return value


def health(gw) -> dict:
    return httpx.get(f"{gw.http}/healthz", timeout=WAIT_S).json()


def start_redis(port: int, directory: str, *extra: str) -> subprocess.Popen:
    """A private redis-server with extra options (debug commands for loading a big dataset)."""
    command = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        directory,
        *extra,
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            no_retry(port).ping()
            return server
        except redis.BusyLoadingError:
            return server  # up, still loading its dataset
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)


def no_retry(port: int) -> redis.Redis:
    """A client that reports LOADING at once (redis-py otherwise retries it until the load is done)."""
    return redis.Redis(port=port, retry=Retry(NoBackoff(), 0))


def _loaded(port: int) -> bool:
    try:
        return no_retry(port).info("persistence")["loading"] == 0
    except redis.RedisError:
        return False


@pytest.fixture
def redis_server_binary():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found (make services installs it)")


def test_redis_errors_of_every_kind_are_survived(services, redis_server_binary, tmp_path):
    port, master_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    options = ("--enable-debug-command", "yes", "--enable-protected-configs", "yes")
    server = start_redis(port, str(data_dir), *options)
    master = private_redis(master_port, str(tmp_path))
    url = f"redis://127.0.0.1:{port}/0"
    admin = redis.Redis(port=port)
    try:
        with running_gateway(TEST_DATABASE_URL, url, probe_interval_s=0.2) as gw:

            async def scenario() -> None:
                nonlocal server
                channel = gw.channels.events_for("AAPL")
                client = await Client.open(gw.url)
                await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern"]})
                n = 0

                async def delivered() -> None:
                    """A message published now reaches the client (the gateway relays again)."""
                    nonlocal n
                    n += 1
                    await asyncio.to_thread(gw.publish_events, [pattern("AAPL", 0.9, 1000 + n)])
                    await client.until(lambda d: any(m["timestamp"] == 1_800_000_000_000 + (1000 + n) * 60_000 for m in d))

                async def resume_during() -> dict:
                    """A client resuming while Redis misbehaves: served, or told `unavailable`, never `internal`."""
                    other = await Client.open(gw.url)
                    reply = await other.request(
                        {
                            "type": "subscribe",
                            "symbols": ["AAPL"],
                            "kinds": ["pattern"],
                            "positions": {channel: {"epoch": "e", "offset": 1}},
                        }
                    )
                    await other.close()
                    assert reply["type"] in ("subscribed", "reset") or reply.get("code") == "unavailable", reply
                    return reply

                await delivered()
                # OOM: Redis refuses writes over maxmemory (the publisher's XADD); reads and pub/sub go on
                admin.config_set("maxmemory-policy", "noeviction")
                admin.config_set("maxmemory", 1)
                with pytest.raises(redis.ResponseError, match="maxmemory"):
                    gw.publish_events([pattern("AAPL", 0.9, 1)])
                assert (await resume_during())["type"] in ("subscribed", "reset")
                admin.config_set("maxmemory", 0)
                await delivered()

                # READONLY: Redis becomes a replica (of an empty master: it loses its data, so a new epoch)
                admin.replicaof("127.0.0.1", master_port)
                wait_for(lambda: admin.info("replication").get("master_link_status") == "up", "replication")
                with pytest.raises(redis.ReadOnlyError):
                    gw.publish_events([pattern("AAPL", 0.9, 2)])
                await resume_during()
                admin.replicaof("NO", "ONE")
                await delivered()

                # MISCONF: a failed RDB save stops writes (and PING) until a save succeeds
                doomed = tmp_path / "doomed"
                doomed.mkdir()
                admin.config_set("dir", str(doomed))
                admin.config_set("save", "3600 1")
                shutil.rmtree(doomed)  # the server's working directory is gone: the save fails
                admin.bgsave()
                wait_for(
                    lambda: (
                        (p := admin.info("persistence"))["rdb_bgsave_in_progress"] == 0 and p["rdb_last_bgsave_status"] == "err"
                    ),
                    "a failed save",
                )
                with pytest.raises((redis.ResponseError, RedisUnavailable), match="MISCONF"):
                    gw.publish_events([pattern("AAPL", 0.9, 3)])
                await resume_during()
                admin.config_set("dir", str(data_dir))
                admin.bgsave()
                wait_for(
                    lambda: (
                        (p := admin.info("persistence"))["rdb_bgsave_in_progress"] == 0 and p["rdb_last_bgsave_status"] == "ok"
                    ),
                    "a good save",
                )
                admin.config_set("save", "")
                await delivered()

                # LOADING: Redis restarts with a large dataset; the gateway retries through the load
                admin.execute_command("DEBUG", "POPULATE", 50_000)
                admin.save()
                server.terminate()
                server.wait(30)
                # Redis' own testing knobs: a delay per key (the load lasts a few seconds) and answering
                # clients (LOADING) every KB instead of every 2 MB
                server = await asyncio.to_thread(
                    start_redis,
                    port,
                    str(data_dir),
                    *options,
                    "--key-load-delay",
                    "20",
                    "--loading-process-events-interval-bytes",
                    "1024",
                )
                loading = no_retry(port).info("persistence")["loading"]
                if loading:
                    await resume_during()
                await asyncio.to_thread(wait_for, lambda: health(gw)["status"] == "healthy", "healthy after loading", 60)
                await asyncio.to_thread(wait_for, lambda: _loaded(port), "the load to finish (for the publisher)", 60)
                await delivered()
                await client.close()
                return loading

            loading = asyncio.run(scenario())
            assert loading, "the restarted Redis was already loaded: the LOADING case was not exercised"
            stats = gw.gateway.stats
            assert stats.redis_reconnects >= 1  # the restart
            assert all(t.running for t in stats.tasks.values()) and stats.internal_errors == 0
            wait_for(lambda: health(gw)["status"] == "healthy", "healthy at the end")
    finally:
        for p in (server, master):
            p.kill()  # not terminate: a server that cannot save refuses to shut down
            p.wait(30)


def test_a_subscribe_while_redis_is_down_changes_nothing_and_says_unavailable(services, redis_server_binary, tmp_path):
    port = free_port()
    server = private_redis(port, str(tmp_path))
    try:
        with running_gateway(TEST_DATABASE_URL, f"redis://127.0.0.1:{port}/0", probe_interval_s=0.2) as gw:

            async def scenario() -> None:
                nonlocal server
                client = await Client.open(gw.url)
                await client.request({"type": "subscribe", "symbols": ["MSFT"], "kinds": ["live"]})
                server.terminate()
                server.wait(10)
                reply = await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["live", "bar"]})
                assert reply["type"] == "error" and reply["code"] == "unavailable"
                assert "Redis is unavailable" in reply["message"] and "Error" not in reply["message"]
                state = await client.request({"type": "unsubscribe", "symbols": []})
                assert state["symbols"] == ["MSFT"] and state["kinds"] == ["live"]  # nothing half-applied
                server = private_redis(port, str(tmp_path))
                await asyncio.to_thread(wait_for, lambda: health(gw)["status"] == "healthy", "healthy again")
                reply = await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["live", "bar"]})
                assert reply["type"] == "subscribed" and reply["symbols"] == ["AAPL", "MSFT"]
                await client.close()

            asyncio.run(scenario())
            assert gw.gateway.stats.redis_errors >= 4 and gw.gateway.stats.internal_errors == 0
    finally:
        server.terminate()
        server.wait(10)


def test_postgres_down_answers_503_then_recovers(db):
    db.execute("INSERT INTO symbols (symbol) VALUES ('AAPL')")
    target = int(conninfo_to_dict(TEST_DATABASE_URL).get("port") or 5432)
    port = free_port()
    with KafkaProxy(port, target) as proxy:
        url = make_conninfo(TEST_DATABASE_URL, host="127.0.0.1", port=str(port))
        with running_gateway(url, REDIS_URL, probe_interval_s=0.2, db_timeout_s=1.0, db_pool_min=1) as gw:
            with httpx.Client(base_url=gw.http, timeout=WAIT_S) as client:
                assert client.get("/api/ticks/recent", params={"symbol": "AAPL"}).status_code == 200
                proxy.cut()
                down = client.get("/api/ticks/recent", params={"symbol": "AAPL"})
                assert down.status_code == 503 and down.json() == {"detail": "PostgreSQL is unavailable; retry later"}
                assert down.headers["retry-after"] == "5"
                for path in (
                    "/api/symbols",
                    "/api/events?symbol=AAPL",
                    "/api/bars?symbol=AAPL&start=2026-01-01T00:00:00Z&end=2026-01-01T01:00:00Z",
                ):
                    assert client.get(path).status_code == 503, path
                report = wait_for(lambda: (h := health(gw))["database"] == "unreachable" and h, "health says so")
                assert report["status"] == "degraded" and "PostgreSQL" in report["reason"]
                # a write and a watchlist subscribe too (after the health check: meanwhile a probe
                # waiting for the pool would read as a silent Redis)
                assert client.put("/api/watchlists/x", json={"symbols": ["AAPL"]}).status_code == 503

                async def follow() -> dict:
                    ws = await Client.open(gw.url)
                    reply = await ws.request({"type": "subscribe", "watchlist": "x"})
                    await ws.close()
                    return reply

                reply = asyncio.run(follow())
                assert reply["code"] == "unavailable" and "PostgreSQL is unavailable" in reply["message"], reply
                proxy.restore()
                wait_for(
                    lambda: client.get("/api/ticks/recent", params={"symbol": "AAPL"}).status_code == 200,
                    "REST back",
                    timeout=60,
                    every=0.25,
                )
                wait_for(lambda: health(gw)["database"] == "ok", "health back")
            assert gw.gateway.stats.database_errors >= 5


def test_background_tasks_are_supervised_restarted_and_visible(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, probe_interval_s=0.2) as gw:
        g = gw.gateway
        failures = {"flush": 4, "probe": 4}
        flush, publish = g.flusher.flush, g.probe.redis.publish

        def failing_flush():
            if failures["flush"] > 0:
                failures["flush"] -= 1
                raise RuntimeError("injected flusher failure")
            flush()

        async def failing_publish(*args, **kwargs):
            if failures["probe"] > 0:
                failures["probe"] -= 1
                raise KeyError("injected probe failure")
            return await publish(*args, **kwargs)

        seen: list[dict] = []

        def watch(name: str) -> bool:
            report = health(gw)
            if not report["tasks"][name]["running"]:
                seen.append(report)
            return report["tasks"][name]["restarts"] == 4 and report["tasks"][name]["running"]

        async def scenario() -> None:
            client = await Client.open(gw.url)
            await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["live"]})
            g.flusher.flush = failing_flush
            await asyncio.to_thread(wait_for, lambda: watch("flusher"), "flusher restarted 4 times")
            g.probe.redis.publish = failing_publish
            await asyncio.to_thread(wait_for, lambda: watch("redis-probe"), "probe restarted 4 times")
            bars = gw.bars()
            bars.publish_live([live_bar("AAPL", 3.0)])
            got = await client.until(lambda d: any(m["close"] == 3.0 for m in d))
            assert got[-1]["close"] == 3.0  # delivery goes on after the flusher's restarts
            bars.close()
            await client.close()

        asyncio.run(scenario())
        flusher = [r for r in seen if not r["tasks"]["flusher"]["running"]]
        assert flusher and flusher[0]["status"] == "error" and "flusher" in flusher[0]["reason"]
        probe = [r for r in seen if not r["tasks"]["redis-probe"]["running"]]
        assert probe and probe[0]["status"] == "degraded"
        report = health(gw)
        assert report["tasks"]["flusher"]["last_error"] == "RuntimeError"
        assert report["tasks"]["redis-probe"]["last_error"] == "KeyError"
        assert report["counters"]["task_restarts"] >= 8
        assert "tickstock_gateway_task_restarts_total" in httpx.get(f"{gw.http}/metrics", timeout=WAIT_S).text


def test_the_redis_reader_is_restarted_when_it_dies(services, redis_server_binary, tmp_path):
    port = free_port()
    server = private_redis(port, str(tmp_path))
    try:
        with running_gateway(TEST_DATABASE_URL, f"redis://127.0.0.1:{port}/0", probe_interval_s=0.2) as gw:
            g = gw.gateway
            left = {"n": 3}
            relay = g.relay.forward

            async def failing_relay(pubsub):
                if left["n"] > 0:
                    left["n"] -= 1
                    raise ZeroDivisionError("injected reader failure")
                await relay(pubsub)

            async def scenario() -> None:
                client = await Client.open(gw.url)
                await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["live"]})
                g.relay.forward = failing_relay
                redis.Redis(port=port).client_kill_filter(_type="pubsub")  # the reader reconnects through forward
                await asyncio.to_thread(
                    wait_for,
                    lambda: g.stats.tasks["redis-reader"].restarts == 3 and health(gw)["status"] == "healthy",
                    "reader restarted 3 times",
                )
                bars = gw.bars()
                bars.publish_live([live_bar("AAPL", 5.0)])
                got = await client.until(lambda d: any(m["close"] == 5.0 for m in d))
                assert got[-1]["close"] == 5.0
                bars.close()
                await client.close()

            asyncio.run(scenario())
            assert g.stats.tasks["redis-reader"].last_error == "ZeroDivisionError"
    finally:
        server.terminate()
        server.wait(10)
