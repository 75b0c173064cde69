"""`python -m bench.chaos` (`make chaos`): fuzz every decoder, run every chaos scenario, write bench/chaos.json.

    python -m bench.chaos                          # the full run: >= 1,000,000 fuzzed records, 10 kills per flow, 30 s outages
    python -m bench.chaos --profile short          # what `make test` runs (tests/integration/test_chaos*.py), as a command
    python -m bench.chaos --only fuzz --fuzz-records 5000
    python -m bench.chaos --only scenarios --scenario poison --scenario redis_outage

Databases: `CHAOS_DATABASE_URL` (default .../tickstock_chaos) for the live runs and the same name
with `_base` for the uninterrupted runs; both are created and migrated. Kafka and Redis: the
flows' own variables (`KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL`). Exits 1 when any decoder
crashed or any scenario lost, doubled or crashed anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.chaos.fuzz import run_fuzz
from bench.chaos.scenarios import FULL, SHORT, Environment, run_scenario, scenarios

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "chaos.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("full", "short"), default="full")
    parser.add_argument("--only", choices=("fuzz", "scenarios"), default=None)
    parser.add_argument("--scenario", action="append", default=[], help="run only these scenarios (repeatable)")
    parser.add_argument("--fuzz-records", type=int, default=None, help="mutated records per decoder")
    parser.add_argument("--fuzz-examples", type=int, default=None, help="hypothesis examples per decoder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    profile = FULL if args.profile == "full" else SHORT

    from flows.settings import Settings

    defaults = Settings()
    database_url = os.environ.get("CHAOS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tickstock_chaos")
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "profile": profile.name, "seed": args.seed,
        "config": {"profile": {k: getattr(profile, k) for k in profile.__dataclass_fields__},
                   "kafka": defaults.kafka_bootstrap_servers, "redis": defaults.redis_url, "database": database_url,
                   "load_average": os.getloadavg()[0]},
    }  # fmt: skip
    failed = False
    started = time.monotonic()

    if args.only in (None, "fuzz"):
        records = args.fuzz_records or profile.fuzz_records
        examples = args.fuzz_examples if args.fuzz_examples is not None else profile.fuzz_examples
        print(f"fuzzing every decoder: {records:,} mutated records and {examples:,} hypothesis examples each", flush=True)
        fuzz = run_fuzz(records, examples, seed=args.seed, log=lambda line: print(line, flush=True))
        total = sum(t["records"] for name, t in fuzz.items() if name != "detection.on_bar")
        crashes = sum(t["crashes"] for t in fuzz.values())
        results["fuzz"] = {"records": total, "crashes": crashes, "violations": sum(t["violations"] for t in fuzz.values()),
                           "decoders": fuzz}  # fmt: skip
        failed |= crashes > 0
        _write(args.out, results)

    if args.only in (None, "scenarios"):
        env = Environment(
            bootstrap=defaults.kafka_bootstrap_servers, redis_url=defaults.redis_url, database_url=database_url,
            baseline_database_url=_sibling(database_url, "_base"),
            workdir=Path(tempfile.gettempdir()) / "tickstock-chaos" / time.strftime("%Y%m%d-%H%M%S"), seed=args.seed,
            log=lambda line: print(line, flush=True),
        )  # fmt: skip
        env.prepare()
        chosen = [s for s in scenarios(profile) if not args.scenario or s.name in args.scenario]
        results["scenarios"] = []
        for spec in chosen:
            print(f"scenario {spec.name}: {spec.description}", flush=True)
            outcome = run_scenario(spec, profile, env)
            results["scenarios"].append(outcome)
            print(f"  -> {'ok' if outcome['ok'] else 'FAILED'} in {outcome['seconds']:.0f} s"
                  + "".join(f"\n     - {p}" for p in outcome["problems"][:12]), flush=True)  # fmt: skip
            failed |= not outcome["ok"]
            _write(args.out, results)

    results["seconds"] = round(time.monotonic() - started, 1)
    _write(args.out, results)
    print()
    print(table(results))
    print(f"\nwrote {args.out} ({results['seconds']:.0f} s)")
    return 1 if failed else 0


def _sibling(url: str, suffix: str) -> str:
    head, _, name = url.rpartition("/")
    name, _, query = name.partition("?")
    return f"{head}/{name}{suffix}" + (f"?{query}" if query else "")


def _write(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def table(results: dict[str, Any]) -> str:
    """The fuzz counts per decoder and one line per scenario, as Markdown tables."""
    lines = []
    fuzz = results.get("fuzz")
    if fuzz:
        lines += [f"fuzz: {fuzz['records']:,} records, {fuzz['crashes']:,} crashes, {fuzz['violations']:,} violations", "",
                  "| decoder | records | accepted | refused | crashes | violations | main crash / violation |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, t in fuzz["decoders"].items():
            top = next(iter(t["crash_kinds"]), None) or next(iter(t["violation_kinds"]), "")
            lines.append(f"| {name} | {t['records']:,} | {t['accepted']:,} | {t['refused']:,} | {t['crashes']:,} | "
                         f"{t['violations']:,} | {top} |")  # fmt: skip
        lines.append("")
    if results.get("scenarios"):
        lines += ["| scenario | input records | bars expected | written | lost | duplicated | unexpected | dead letters by kind "
                  "| crashes | time to recover (s) | redis missing/stale | revisions differ | detection missing/extra/different "
                  "| ok |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for s in results["scenarios"]:
            letters = ", ".join(f"{k} {v}" for k, v in sorted(s["dead_letters"].items())) or "-"
            r = s.get("redis") or {}
            d = s.get("detection")
            detection = (
                "-" if d is None else "/".join(str(sum(t[x] for t in d.values())) for x in ("missing", "extra", "different"))
            )
            recover = _recovery(s["faults"])
            revisions = "-" if s["revisions_differ_from_uninterrupted"] is None else s["revisions_differ_from_uninterrupted"]
            lines.append(f"| {s['scenario']} | {s['input_records']:,} | {s['bars_expected']:,} | {s['bars_written']:,} | "
                         f"{s['bars_lost']:,} | {s['bars_duplicated']:,} | {s['bars_unexpected']:,} | {letters} | "
                         f"{s['crashes']} | {recover} | {r.get('redis_missing', '-')}/{r.get('redis_stale', '-')} | "
                         f"{revisions} | {detection} | {'yes' if s['ok'] else 'no'} |")  # fmt: skip
    return "\n".join(lines)


def _recovery(faults: list[dict[str, Any]]) -> str:
    """`max` over the scenario's faults (and the median when there are several); `never` if one did not recover."""
    if not faults:
        return "-"
    times = [f["recover_s"] for f in faults]
    if None in times:
        return f"never ({times.count(None)} of {len(times)})"
    if len(times) == 1:
        return f"{times[0]}"
    return f"max {max(times)}, median {statistics.median(times):.1f}"


if __name__ == "__main__":
    sys.exit(main())
