"""The scrape-time pool collector and the Metrics object, without a database."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastapi_dbpool import Database, DatabaseSettings, PoolSnapshot
from fastapi_dbpool.errors import SettingsError
from fastapi_dbpool.observe.metrics import POOL_COUNTERS, POOL_GAUGES, Metrics, PoolCollector

SNAPSHOT = PoolSnapshot(
    name="primary",
    size=10,
    max_overflow=5,
    checked_out=12,
    overflow=2,
    idle=0,
    waiting=3,
    checkouts_total=1000,
    timeouts_total=7,
    connects_total=12,
    invalidations_total=1,
    leaks_total=2,
    retries_total=4,
    wait_seconds_total=4.5,
    wait_seconds_max=1.5,
    writers_waiting=6,
)


@dataclass
class FakeMonitor:
    """What the collector reads of a pool's monitor: its name and a snapshot."""

    name: str
    snapshot_now: PoolSnapshot
    reads: int = 0

    def snapshot(self) -> PoolSnapshot:
        self.reads += 1
        return self.snapshot_now


def scrape(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, sample.labels.get("pool", ""))] = sample.value
    return samples


def test_collector_reports_every_pool_metric_at_scrape_time() -> None:
    primary = FakeMonitor("primary", SNAPSHOT)
    replica = FakeMonitor("replica", replace(SNAPSHOT, name="replica", checked_out=0, waiting=0))
    registry = CollectorRegistry()
    registry.register(PoolCollector([primary, replica]))  # type: ignore[list-item]
    assert primary.reads == 0, "registering must not read the pool"

    samples = scrape(registry)
    assert primary.reads == 1
    assert samples[("dbpool_size", "primary")] == 10
    assert samples[("dbpool_max_overflow", "primary")] == 5
    assert samples[("dbpool_checked_out", "primary")] == 12
    assert samples[("dbpool_checked_out", "replica")] == 0
    assert samples[("dbpool_overflow", "primary")] == 2
    assert samples[("dbpool_waiting", "primary")] == 3
    assert samples[("dbpool_write_gate_waiting", "primary")] == 6
    assert samples[("dbpool_checkouts_total", "primary")] == 1000
    assert samples[("dbpool_timeouts_total", "primary")] == 7
    assert samples[("dbpool_connects_total", "primary")] == 12
    assert samples[("dbpool_invalidations_total", "primary")] == 1
    assert samples[("dbpool_leaks_total", "primary")] == 2

    primary.snapshot_now = replace(SNAPSHOT, checked_out=0, checkouts_total=1001)
    samples = scrape(registry)
    assert samples[("dbpool_checked_out", "primary")] == 0
    assert samples[("dbpool_checkouts_total", "primary")] == 1001


def test_collector_types_and_help() -> None:
    registry = CollectorRegistry()
    registry.register(PoolCollector([FakeMonitor("primary", SNAPSHOT)]))  # type: ignore[list-item]
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    for name, _, _ in POOL_GAUGES:
        assert families[name].type == "gauge" and families[name].documentation
    for name, _, _ in POOL_COUNTERS:
        family = families[name.removesuffix("_total")]
        assert family.type == "counter" and family.documentation


def test_metrics_of_a_stopped_database_are_zero() -> None:
    metrics = Metrics([Database(DatabaseSettings(url="sqlite:///never-opened.db"))])
    text, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = {
        (s.name, s.labels.get("pool")): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
    }
    assert samples[("dbpool_checked_out", "primary")] == 0
    assert samples[("dbpool_checkout_wait_seconds_count", "primary")] == 0
    assert not Path("never-opened.db").exists()


def test_openmetrics_when_asked() -> None:
    metrics = Metrics([Database(DatabaseSettings(url="sqlite:///never-opened.db"))])
    text, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.decode().rstrip().endswith("# EOF")


def test_multiprocess_dir_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    database = Database(DatabaseSettings(url="sqlite:///never-opened.db"))
    with pytest.raises(SettingsError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics([database])
