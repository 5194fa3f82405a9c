"""An app in the shape FastAPI apps have, and its port onto the library.

``original/`` is written as the FastAPI/SQLModel tutorials and the full-stack template
write it: sync ``def`` endpoints on SQLModel, a module-level engine, a ``get_db()`` yield
dependency, a start-up script (``app/initial_data.py``) and its own tests, whose
fixtures use the module-level engine. ``ported/`` is the same app on fastapi_dbpool.
The port must stay small (at most 10 lines added or removed, together), need no monkeypatch and no second engine, keep the app's
tests unchanged and passing, and show its pool in /metrics. Each app runs in a
subprocess of this interpreter, so ``make test-sa20`` runs it on SQLAlchemy 2.0.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ORIGINAL, PORTED = HERE / "original", HERE / "ported"
MAX_CHANGED_LINES = 10


def _sources(root: Path) -> dict[str, list[str]]:
    return {
        str(path.relative_to(root)): path.read_text().splitlines()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in {".py", ".ini"} and "__pycache__" not in path.parts
    }


def port_diff() -> tuple[list[str], list[str]]:
    """Lines the port adds and removes, over every file of the app."""
    original, ported = _sources(ORIGINAL), _sources(PORTED)
    assert original.keys() == ported.keys(), "the port adds or removes no file"
    added, removed = [], []
    for name in original:
        for line in difflib.unified_diff(original[name], ported[name], lineterm="", n=0):
            if line.startswith("+") and not line.startswith("+++"):
                added.append(f"{name}: {line[1:]}")
            elif line.startswith("-") and not line.startswith("---"):
                removed.append(f"{name}: {line[1:]}")
    return added, removed


def test_port_is_small_and_leaves_the_tests_and_scripts_alone() -> None:
    added, removed = port_diff()
    # Every changed line counts: a line rewritten is one removed and one added.
    changed = [f"- {line}" for line in removed] + [f"+ {line}" for line in added]
    assert len(changed) <= MAX_CHANGED_LINES, "\n".join(changed)
    touched = {line.split(":", 1)[0] for line in added + removed}
    assert touched == {"app/db.py", "app/main.py"}  # tests, models and the script unchanged
    assert not any("monkeypatch" in line or "create_engine(" in line for line in added)


def _run(app_dir: Path, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'heroes.db'}",
        "PYTHONPATH": str(app_dir),
    }
    return subprocess.run(
        [sys.executable, *args], cwd=app_dir, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.parametrize("app_dir", [ORIGINAL, PORTED], ids=["original", "ported"])
def test_the_apps_own_tests_pass(app_dir: Path, tmp_path: Path) -> None:
    done = _run(app_dir, ["-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout


PROBE = """
import gc
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

import app.db
from app.initial_data import main as initial_data
from app.main import app as web
from app.models import Hero

initial_data()  # the start-up script, before the app runs
with TestClient(web) as client:
    assert client.get("/heroes/").status_code == 200
    metrics = client.get("/metrics").text
with Session(app.db.engine) as session:  # after the app stopped: still the same engine
    assert session.exec(select(Hero)).first() is not None
sync_pools = {
    id(each.pool) for each in gc.get_objects()
    if isinstance(each, Engine) and not each.dialect.is_async
}
print("SYNC_POOLS", len(sync_pools))
print("SAME_ENGINE", app.db.engine is app.db.database.sync.engine)
print(metrics)
"""


def test_port_has_one_sync_engine_and_its_pool_in_metrics(tmp_path: Path) -> None:
    done = _run(PORTED, ["-c", PROBE], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "SYNC_POOLS 1" in done.stdout
    assert "SAME_ENGINE True" in done.stdout
    checkouts = [
        line for line in done.stdout.splitlines()
        if line.startswith('dbpool_checkouts_total{pool="primary-sync"}')
    ]  # fmt: skip
    assert checkouts, done.stdout
    assert float(checkouts[0].split()[-1]) >= 1
    # A sync-only app: the async pool exists (created with the app) but never connects.
    assert 'dbpool_connects_total{pool="primary"} 0.0' in done.stdout
