"""The served app freezes its start-up heap; apps built for tests do not."""

from __future__ import annotations

import gc

from fastapi_dbpool import DatabaseSettings
from users_api.main import create_app


async def test_served_app_freezes_what_exists_once_started(settings: DatabaseSettings) -> None:
    gc.unfreeze()
    app = create_app(settings, freeze_startup_heap=True)
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # give the objects back to the collector for the other tests


async def test_apps_built_for_tests_leave_the_collector_alone(settings: DatabaseSettings) -> None:
    gc.unfreeze()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
