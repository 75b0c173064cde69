"""The package as a user installs it: a wheel built from the checkout, installed into a fresh
virtualenv outside it, and every program run from there.

`make venv` installs the checkout editable, which hides a module or data file the wheel lacks
(the wheel once lacked `flows/detect/`). Here nothing can come from the checkout: the source is
copied (tracked and untracked-but-not-ignored files, as a fresh clone has them) and built with
`pip wheel` the way `pip install .` does; the wheel goes into a new virtualenv under a temporary
directory; every program runs with that directory as its working directory, no PYTHONPATH, and
each check first asserts that `flows`, `connectors`, `schemas` and `infra` load from the
virtualenv.

What is proved: the wheel holds every module and every data file of the four packages (each
tracked file there is either shipped or named in NOT_SHIPPED with the reason), plus the
dashboard's chart library; every `tickstock-*` program is installed and runs (`--help`, and a
real short run of each that is cheap: migrations into a throwaway database, topics, a flat-file
day replayed, the bar flow and the detection flow over it, the bar check against what the flow
stored, the synthetic feed, the gateway serving the dashboard and its chart library, a token).

What is not re-done, to stay fast: the third-party dependencies are not downloaded and installed
again. The virtualenv gets a path (a .pth file) to a folder of links to exactly the
distributions the wheel's own `Requires-Dist` names, followed through their requirements, taken
from the project's virtualenv. So an import of an undeclared dependency still fails here, and
the project's own code can only come from the wheel (the editable install's finder is not among
the links).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import jwt
import psycopg
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from flows.settings import Settings
from tests.support.fixtures.flat_files import DIFFERENCES_JSON, HERE, MINUTE_AGGS, TRADES
from tests.support.services import free_port, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.cost(20)]

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "connectors", "schemas", "infra")
CHART_LIBRARY = "connectors/gateway/vendor/lightweight-charts.standalone.production.js"
NPM_CHART_LIBRARY = REPO / "infra/dashboard/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js"

# Every program of pyproject.toml's [project.scripts] and what it runs.
PROGRAMS = {
    "tickstock-bridge": "connectors.feeds.bridge.program:run",
    "tickstock-replay": "connectors.feeds.replay:main",
    "tickstock-synthetic": "connectors.feeds.synthetic.program:main",
    "tickstock-gateway": "connectors.gateway.__main__:main",
    "tickstock-token": "connectors.gateway.__main__:token_main",
    "tickstock-bar-flow": "flows.run:bar_flow",
    "tickstock-detection-flow": "flows.run:detection_flow",
    "tickstock-bar-check": "flows.bar_check:main",
    "tickstock-topics": "infra.topics:main",
    "tickstock-migrate": "infra.migrate:main",
    "tickstock-policies": "infra.policies:main",
    "tickstock-backfill": "flows.backfill:main",
    "tickstock-analyst": "connectors.analyst.cli:main",
}

# Tracked files inside the packages that the wheel leaves out, and why. A new data file must be
# shipped (pyproject.toml's package-data) or named here.
NOT_SHIPPED = {
    "infra/*.sh": "the checkout's set-up scripts (make targets); an installation is set up by its own means",
    "infra/dashboard/*": "the npm pins of the chart library; the built file itself is shipped (connectors/gateway/vendor)",
    "infra/timescale/*": "the embedded TimescaleDB is a test and development fixture (npm packages, `make timescale`); "
    "an installation uses a real TimescaleDB or PostgreSQL",
    "flows/*.pxd": "Cython's types for compiling the bar book (setup.py); the wheel carries the compiled modules",
}
COMPILED = ("flows/bars", "flows/book")  # setup.py compiles them: each is in the wheel as an extension module too


@dataclass
class Install:
    """The installed wheel: its virtualenv, and a working directory outside the checkout."""

    wheel: Path
    venv: Path
    work: Path

    def env(self, **settings: str | None) -> dict[str, str]:
        """`clean_env()` with the virtualenv's programs first on PATH; a setting of None unsets it."""
        env = clean_env()
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        for name, value in settings.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def run(self, program: str, *args: str, timeout: float = 120, **settings: str | None) -> subprocess.CompletedProcess[str]:
        path = self.venv / "bin" / program
        assert path.exists(), f"{program} is not installed in {self.venv / 'bin'}"
        return subprocess.run(
            [str(path), *args], cwd=self.work, env=self.env(**settings), capture_output=True, text=True, timeout=timeout
        )

    def python(self, code: str, **settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code],
            cwd=self.work,
            env=self.env(**settings),
            capture_output=True,
            text=True,
            timeout=120,
        )


def clean_env() -> dict[str, str]:
    """This environment (OPENBLAS_* and the like stay) without Python's search paths, which could lead
    pip or a program to the checkout (`PYTHONPATH=$PWD` would show pip a tickstock_streams.egg-info)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def tracked_package_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *PACKAGES],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(p for p in out.split("\0") if p and (REPO / p).is_file())


def copy_source(to: Path) -> None:
    """The checkout as a fresh clone has it; the chart library's npm install is linked, not re-run."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    for name in filter(None, out.split("\0")):
        source = REPO / name
        if source.is_file():  # a deleted but still tracked file is skipped
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    (to / "infra/dashboard/node_modules").symlink_to(REPO / "infra/dashboard/node_modules")


def dependency_links(requires_dist: list[str], into: Path) -> None:
    """Links to the distributions `requires_dist` names, followed through their own requirements."""
    seen: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in requires_dist]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} (required by the wheel) is not installed in the project's virtualenv: run `make venv`")
        assert dist.files is not None, f"{req.name} has no RECORD"
        for wanted in {"", *req.extras}:
            if (canonicalize_name(req.name), wanted) in seen:
                continue
            seen.add((canonicalize_name(req.name), wanted))
            todo.extend((Requirement(r), wanted) for r in dist.requires or [])
        for top in {f.parts[0] for f in dist.files if f.parts[0] not in ("..", "__pycache__")}:
            link = into / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert NPM_CHART_LIBRARY.exists(), "the dashboard's chart library is not installed: run `make dashboard-assets`"
    root = tmp_path_factory.mktemp("wheel")
    source, dist = root / "source", root / "dist"
    copy_source(source)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(dist),
            str(source),
        ],
        cwd=root,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = dist.glob("tickstock_streams-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Install:
    root = tmp_path_factory.mktemp("install")
    venv, deps, work = root / "venv", root / "dependencies", root / "work"
    deps.mkdir()
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60, env=clean_env())
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", str(wheel)], cwd=work, env=clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0 and "Successfully installed tickstock-streams" in done.stdout, done.stdout + done.stderr
    with zipfile.ZipFile(wheel) as z:
        (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = Parser().parsestr(z.read(metadata).decode()).get_all("Requires-Dist") or []
    dependency_links(requires, deps)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "tickstock-test-dependencies.pth").write_text(f"{deps}\n")
    return Install(wheel, venv, work)


def test_the_wheel_holds_every_module_and_data_file_and_the_chart_library(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if ".dist-info/" not in n}
        library = z.read(CHART_LIBRARY)
    expected = {p for p in tracked_package_files() if not any(fnmatch.fnmatch(p, pattern) for pattern in NOT_SHIPPED)}
    assert expected, "git ls-files found nothing"
    assert sorted(expected - names) == [], "files the wheel lacks (ship them in pyproject.toml, or add to NOT_SHIPPED)"
    compiled = {n for n in names if n.endswith(".so") and n.split(".", 1)[0] in COMPILED}
    assert sorted(n.split(".", 1)[0] for n in compiled) == sorted(COMPILED), "the bar book is not compiled in the wheel"
    extra = sorted(names - expected - compiled - {CHART_LIBRARY, "connectors/gateway/vendor/lightweight-charts.LICENSE"})
    assert extra == [], "files in the wheel that are not the checkout's"
    assert {"flows/detect/__init__.py", "schemas/conditions.csv", "infra/migrations/0001_ohlcv.up.sql"} <= names
    assert library == NPM_CHART_LIBRARY.read_bytes()  # the npm package's file, as pinned by the lock


def test_every_program_is_installed_and_answers_help(installed: Install) -> None:
    listed = installed.python(
        "import json, importlib.metadata as m;"
        "print(json.dumps({e.name: e.value for e in m.distribution('tickstock-streams').entry_points"
        " if e.group == 'console_scripts'}))"
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == PROGRAMS
    started = {  # at once: each spends most of its time importing
        program: subprocess.Popen(
            [str(installed.venv / "bin" / program), "--help"],
            cwd=installed.work,
            env=installed.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for program in PROGRAMS
    }
    helps = {}
    for program, process in started.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"{program} --help: exit {process.returncode}\n{out}{err}"
        helps[program] = out
    for program, out in helps.items():
        assert "usage:" in out.lower() or "tickstock-gateway" in out, f"{program} --help printed {out!r}"
    assert "--workers-per-process" in helps["tickstock-bar-flow"] and "--addresses" in helps["tickstock-detection-flow"]


def test_every_module_and_both_flows_load_from_the_install(installed: Install) -> None:
    s = Settings()
    code = f"""
import importlib, pkgutil, sys
for name in {PACKAGES!r}:
    package = importlib.import_module(name)
    assert package.__file__.startswith({str(installed.venv)!r}), (name, package.__file__)
    for module in pkgutil.walk_packages(package.__path__, name + "."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
assert not [p for p in sys.path if p.startswith({str(REPO)!r})], sys.path
from bytewax.dataflow import Dataflow
from flows import detection, ohlcv
assert isinstance(ohlcv.build_flow(), Dataflow) and isinstance(detection.build_flow(), Dataflow)
from schemas.conditions import RULES_CSV
from infra.migrate import MIGRATIONS_DIR
print(len(list(MIGRATIONS_DIR.glob("*.sql"))), RULES_CSV.exists())
"""
    done = installed.python(code, KAFKA_BOOTSTRAP_SERVERS=s.kafka_bootstrap_servers, REDIS_URL=s.redis_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(list((REPO / "infra/migrations").glob("*.sql")))), "True"]


@pytest.fixture
def run_settings(services: None, database_url: str) -> dict[str, str]:
    """The environment of one run: its own topics and Redis namespace, a throwaway database."""
    run = uuid.uuid4().hex[:8]
    s = Settings()
    return {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "REDIS_URL": s.redis_url,
        "DATABASE_URL": database_url,
        "REDIS_NAMESPACE": f"test{run}",
        "TOPIC_TRADES": f"w{run}.trades",
        "TOPIC_QUOTES": f"w{run}.quotes",
        "TOPIC_SECOND_AGGS": f"w{run}.aggs.second",
        "TOPIC_MINUTE_AGGS": f"w{run}.aggs.minute",
        "TOPIC_DEAD_LETTER": f"w{run}.deadletter",
        "TOPIC_BARS": f"w{run}.bars",
        "KAFKA_TAIL": "false",
    }


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def test_a_day_through_the_installed_programs(installed: Install, run_settings: dict[str, str]) -> None:
    """Migrations, topics, the fixture day replayed, both flows over it, the bar check on what was stored."""
    env = run_settings
    ok(installed.run("tickstock-migrate", **env))
    status = ok(installed.run("tickstock-migrate", "status", **env))
    assert "0004_rollups: applied" in status.stdout + status.stderr, status
    ok(installed.run("tickstock-policies", "--dry-run", **env))
    assert env["TOPIC_TRADES"] in ok(installed.run("tickstock-topics", **env)).stdout
    ok(installed.run("tickstock-replay", str(HERE / TRADES), **env))
    ok(installed.run("tickstock-bar-flow", **env))
    ok(installed.run("tickstock-detection-flow", **env))
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        bars = conn.execute("SELECT count(*) FROM ohlcv_1min").fetchone()
        indicators = conn.execute("SELECT count(*) FROM indicator_values").fetchone()
    assert bars is not None and bars[0] > 30
    assert indicators is not None and indicators[0] > 0  # the detection flow read the bars topic and stored
    checked = ok(
        installed.run(
            "tickstock-bar-check",
            str(HERE / MINUTE_AGGS),
            "--database-url",
            env["DATABASE_URL"],
            "--json",
            "--examples",
            "100",
            **env,
        )
    )
    report = json.loads(checked.stdout)
    planted = json.loads((HERE / DIFFERENCES_JSON).read_text())
    assert report["only_polygon"]["examples"] == planted["only_polygon"]
    assert report["only_ours"]["examples"] == planted["only_ours"]


def test_the_installed_synthetic_feed_publishes(installed: Install, run_settings: dict[str, str]) -> None:
    ok(installed.run("tickstock-synthetic", "--symbols", "5", "--count", "50", "--create-topics", **run_settings))
    s = Settings(topic_trades=run_settings["TOPIC_TRADES"])
    assert len(read_topic(s, s.topic_trades)) == 50


def test_the_installed_gateway_serves_the_dashboard_and_its_chart_library(
    installed: Install, run_settings: dict[str, str]
) -> None:
    env = {**run_settings, "GATEWAY_DEV_MODE": "true", "GATEWAY_PORT": str(free_port())}
    ok(installed.run("tickstock-migrate", **env))
    log = installed.work / f"gateway-{env['REDIS_NAMESPACE']}.log"
    with log.open("w") as stderr:
        gateway = subprocess.Popen(
            [str(installed.venv / "bin/tickstock-gateway")],
            cwd=installed.work,
            env=installed.env(**env),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert gateway.stdout is not None
        line = gateway.stdout.readline()  # printed once it listens, or nothing when it exits
        assert line.startswith("gateway: http://"), (line, gateway.wait(10), log.read_text())
        base = line.split()[1].removesuffix("/dashboard/")
        with urllib.request.urlopen(f"{base}/dashboard/", timeout=10) as page:
            html = page.read().decode()
        assert '<script src="/vendor/lightweight-charts.standalone.production.js">' in html
        with urllib.request.urlopen(f"{base}/vendor/lightweight-charts.standalone.production.js", timeout=10) as library:
            assert library.read() == NPM_CHART_LIBRARY.read_bytes()
        with urllib.request.urlopen(f"{base}/dashboard/app.js", timeout=10) as app:
            assert app.read() == (REPO / "connectors/gateway/static/app.js").read_bytes()
    finally:
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(30)
    assert code == 0


def test_the_installed_token_command_and_the_bridge_refusing_bad_settings(installed: Install) -> None:
    secret = "s" * 40
    token = ok(installed.run("tickstock-token", "alice", "--symbols", "AAPL", "--kinds", "bar", GATEWAY_JWT_SECRET=secret))
    claims = jwt.decode(token.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert installed.run("tickstock-token", "alice", GATEWAY_JWT_SECRET="short").returncode == 2
    unset: dict[str, str | None] = dict.fromkeys(("MASSIVE_API_KEY", "POLYGON_API_KEY", "API_KEY"))
    refused = installed.run("tickstock-bridge", **unset)
    assert refused.returncode == 2
    assert "MASSIVE_API_KEY" in refused.stderr
