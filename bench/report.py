"""Turn a run's records into bench/results/<date>.md, .json and the scaling plots.

Each figure is the best of the passes (the highest req/s, with that pass's latencies and
errors): on a shared machine, the best pass is the one least disturbed by other work.
Ratios compare with the raw-driver app measured in the same run on the same backend.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .harness import COMPARED, Run
from .loadgen import ENDPOINTS
from .servers import APPS

Key = tuple[str, str, str, str, int, int]


def best(records: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The best pass of each measured point, keyed by what was measured."""
    grouped: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        key = (r["suite"], r["backend"], r["app"], r["variant"], r["connections"], r["pool_size"])
        grouped[(*key[:4], r["endpoint"], *key[4:])].append(r)  # type: ignore[arg-type]
    return {key: max(group, key=lambda r: r["rps"]) for key, group in grouped.items()}


def _find(
    points: dict[Any, dict[str, Any]], suite: str, backend: str, app: str, endpoint: str
) -> dict[str, Any] | None:
    for key, value in points.items():
        if key[:3] == (suite, backend, app) and key[4] == endpoint:
            return value
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def targets(run: Run, points: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    """Check each target of the issue against this run; None where not measured."""

    def get(backend: str, app: str, endpoint: str, field: str) -> float | None:
        found = _find(points, "compare", backend, app, endpoint)
        return float(found[field]) if found else None

    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        checks.append({"target": name, "value": value, "goal": goal, "met": ok})

    def versus(backend: str, app: str, other: str, endpoint: str, goal: float) -> None:
        r = _ratio(get(backend, app, endpoint, "rps"), get(backend, other, endpoint, "rps"))
        label = f"{'PostgreSQL' if backend == pg else 'SQLite'} {ENDPOINTS[endpoint].label}"
        check(f"{label} req/s, {app} vs {other}", r, f">= {goal:g}x", _ge(r, goal))

    pg, sq = "postgresql", "sqlite"
    versus(pg, "users_api", "raw", "get_user", 0.75)
    versus(pg, "users_api", "orm", "get_user", 3)
    r = _ratio(get(pg, "users_api", "get_user", "p99_ms"), get(pg, "raw", "get_user", "p99_ms"))
    check("PostgreSQL GET /users/{id} p99, users_api vs raw", r, "<= 2x", _le(r, 2))
    for endpoint in ("post_user", "list_items", "process_item"):
        versus(pg, "users_api", "raw", endpoint, 0.6)
    versus(sq, "users_api", "raw", "get_user", 0.75)
    # Users who keep their ORM handlers and only swap the dependency for SessionDep.
    for backend in (pg, sq):
        versus(backend, "orm_dbpool", "orm", "get_user", 1.5)

    sync = {
        app: _find(points, "sync", pg, app, "get_user_sync")
        for app in ("users_api", "tutorial_sync")
    }
    ours, theirs = sync["users_api"], sync["tutorial_sync"]
    r = _ratio(ours and ours["rps"], theirs and theirs["rps"])
    check(
        "PostgreSQL sync GET, users_api vs tutorial get_db() (100 threads)",
        r,
        ">= 1.5x",
        _ge(r, 1.5),
    )
    r = _ratio(ours and ours["p99_ms"], theirs and theirs["p99_ms"])
    check("PostgreSQL sync GET p99, users_api vs tutorial get_db()", r, "<= 1x", _le(r, 1))

    sweep = [v for k, v in points.items() if k[0] == "concurrency" and k[2] == "users_api"]
    if sweep:
        peak = max(v["rps"] for v in sweep)
        top = max(sweep, key=lambda v: v["connections"])
        r = top["rps"] / peak if peak else None
        ok = top["errors"] == 0 and _ge(r, 0.9)
        check(
            f"{top['connections']} connections, pool {top['pool_size']}: share of peak req/s "
            f"({top['errors']} errors)",
            r,
            ">= 0.90 and 0 errors",
            ok,
        )
        raw_top = [
            v
            for k, v in points.items()
            if k[0] == "concurrency" and k[2] == "raw" and v["connections"] == top["connections"]
        ]
        if raw_top and top.get("rss_mb") and raw_top[0].get("rss_mb"):
            r = top["rss_mb"] / raw_top[0]["rss_mb"]
            check(
                f"RSS of one worker at {top['connections']} connections, users_api vs raw "
                f"({top['rss_mb']:.0f} vs {raw_top[0]['rss_mb']:.0f} MiB)",
                r,
                "<= 1.5x",
                _le(r, 1.5),
            )
    for endpoint in ("get_user", "post_user"):
        cost = metrics_cost(run.records, endpoint)
        if cost is not None:
            check(
                f"metrics + leak detection cost, {ENDPOINTS[endpoint].label} "
                "(median of paired passes)",
                cost,
                "< 5%",
                cost < 0.05,
            )
    return checks


def metrics_cost(records: list[dict[str, Any]], endpoint: str) -> float | None:
    """1 - median(on/off req/s) over the passes that measured both; None if none did."""
    by_pass: dict[int, dict[str, float]] = defaultdict(dict)
    for r in records:
        if r["suite"] == "metrics" and r["endpoint"] == endpoint:
            by_pass[r["pass"]][r["variant"]] = r["rps"]
    ratios = sorted(
        p["metrics on"] / p["metrics off"]
        for p in by_pass.values()
        if p.get("metrics off") and "metrics on" in p
    )
    if not ratios:
        return None
    mid = len(ratios) // 2
    median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
    return 1 - median


def _ge(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def _le(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def write(run: Run, out_dir: Path) -> Path:
    """Write the markdown, JSON and plots of *run* into *out_dir*; return the .md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M", time.localtime(run.started))
    points = best(run.records)
    checks = targets(run, points)
    plots = _plots(points, out_dir, stamp)
    md = out_dir / f"{stamp}.md"
    md.write_text(_markdown(run, points, checks, plots))
    (out_dir / f"{stamp}.json").write_text(
        json.dumps(
            {
                "config": {k: getattr(run.config, k) for k in run.config.__dataclass_fields__},
                "machine": run.machine,
                "notes": run.notes,
                "targets": checks,
                "best": [dict(v) for v in points.values()],
                "records": run.records,
            },
            indent=1,
            default=str,
        )
    )
    return md


def _markdown(
    run: Run, points: dict[Any, dict[str, Any]], checks: list[dict[str, Any]], plots: list[str]
) -> str:
    c, m = run.config, run.machine
    lines = [
        f"# Benchmark {time.strftime('%Y-%m-%d %H:%M', time.localtime(run.started))}"
        + (" (quick mode: not a measurement)" if c.quick else ""),
        "",
        f"Commit {m['commit']}; {m['cpus']} x {m['cpu']}; Python {m['python']}; "
        f"{m['pinning']}. One uvicorn worker (uvloop, httptools), pool of {c.pool_size}, "
        f"{c.users:,} users and {c.items:,} items. wrk -t1 -c{c.connections}, "
        f"{c.warmup:g} s warm-up then {c.duration:g} s measured, {c.passes} pass(es) "
        "interleaved across apps; each figure is the **best pass** (highest req/s). "
        "Ratios are to the raw-driver app in the same run. Errors count non-2xx answers "
        "and socket errors/timeouts.",
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        "",
        "## Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for t in checks:
        value = t["value"]
        shown = (
            "n/a"
            if value is None
            else (f"{value:.1%}" if "cost" in t["target"] else f"{value:.2f}x")
        )
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {shown} | {t['goal']} | {met} |")
    for backend in run.config.backends:
        lines += ["", f"## {backend}", ""]
        lines += [
            "| endpoint | app | req/s | x raw | p50 ms | p99 ms | p99 x raw | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for endpoint, spec in ENDPOINTS.items():
            raw = _find(points, "compare", backend, "raw", endpoint)
            apps = [(backend, a) for a in COMPARED]
            if backend == run.config.backends[0]:
                apps.append(("none", "nodb"))
            for be, app in apps:
                p = _find(points, "compare", be, app, endpoint)
                if p is None:
                    continue
                lines.append(
                    f"| {spec.label} | {APPS[app].label} | {p['rps']:,.0f} | "
                    f"{_fmt_ratio(_ratio(p['rps'], raw['rps'] if raw else None))} | "
                    f"{p['p50_ms']:.1f} | {p['p99_ms']:.1f} | "
                    f"{_fmt_ratio(_ratio(p['p99_ms'], raw['p99_ms'] if raw else None))} | "
                    f"{p['errors']} |"
                )
    lines += _scaling_tables(points)
    lines += ["", *(f"![{p}]({p})" for p in plots)] if plots else []
    if run.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in run.notes)]
    loads = [r["load_average"] for r in run.records]
    if loads:
        lines += [
            "",
            f"1-minute load average during the run: {min(loads):.2f} to {max(loads):.2f} "
            f"(the app, PostgreSQL and wrk alone make about 2; more means other work shared "
            "the machine).",
        ]
    return "\n".join(lines) + "\n"


def _scaling_tables(points: dict[Any, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    sweep = sorted(
        (v for k, v in points.items() if k[0] == "concurrency"),
        key=lambda v: (v["app"], v["connections"]),
    )
    if sweep:
        lines += ["", "## Concurrency (PostgreSQL, GET /users/{id}, pool 10)", ""]
        lines += [
            "| app | connections | req/s | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {APPS[v['app']].label} | {v['connections']} | {v['rps']:,.0f} | "
            f"{v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['errors']} |"
            for v in sweep
        ]
    pools = sorted((v for k, v in points.items() if k[0] == "pool"), key=lambda v: v["pool_size"])
    if pools:
        lines += ["", "## Pool size (PostgreSQL, users_api, GET /users/{id}, 64 connections)", ""]
        lines += ["| pool | req/s | p50 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|"]
        lines += [
            f"| {v['pool_size']} | {v['rps']:,.0f} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | "
            f"{v['errors']} |"
            for v in pools
        ]
    metrics = sorted(
        (v for k, v in points.items() if k[0] == "metrics"),
        key=lambda v: (v["endpoint"], v["variant"]),
    )
    if metrics:
        lines += ["", "## Metrics and leak detection on/off (PostgreSQL, users_api)", ""]
        lines += [
            "| endpoint | variant | req/s | p50 ms | p99 ms | errors |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {ENDPOINTS[v['endpoint']].label} | {v['variant']} | {v['rps']:,.0f} | "
            f"{v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['errors']} |"
            for v in metrics
        ]
    return lines


def _plots(points: dict[Any, dict[str, Any]], out_dir: Path, stamp: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sweeps = [
        ("concurrency", "connections", "concurrent connections (pool 10)", True),
        ("pool", "pool_size", "pool size (64 connections)", False),
    ]
    for suite, field, xlabel, logx in sweeps:
        series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for key, value in points.items():
            if key[0] == suite:
                series[value["app"]].append(value)
        if not series:
            continue
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for app, values in sorted(series.items()):
            values.sort(key=lambda v: v[field])
            xs = [v[field] for v in values]
            left.plot(xs, [v["rps"] for v in values], marker="o", label=APPS[app].label)
            right.plot(xs, [v["p99_ms"] for v in values], marker="o", label=APPS[app].label)
        for axis, ylabel in ((left, "req/s"), (right, "p99 latency (ms)")):
            axis.set_xlabel(xlabel)
            axis.set_ylabel(ylabel)
            axis.grid(True, alpha=0.3)
            if logx:
                axis.set_xscale("log", base=2)
        right.set_yscale("log")
        left.legend(fontsize=8)
        fig.suptitle(f"PostgreSQL, GET /users/{{id}}: req/s and p99 against {suite}")
        fig.tight_layout()
        name = f"{stamp}-{suite}.png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written
