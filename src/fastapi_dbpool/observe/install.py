"""One call that serves the app's metrics and its pool dashboard."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from .._app import wrap_lifespan
from .dashboard import PoolDashboard
from .http_metrics import RequestMetricsMiddleware
from .metrics import Metrics, databases_of
from .settings import ObservabilitySettings

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["install_metrics"]

_FROM_ENV: Any = object()


def install_metrics(
    app: Any,
    databases: Sequence[Database] | None = None,
    *,
    enabled: bool | None = None,
    token: SecretStr | str | None = _FROM_ENV,
    path: str = "/metrics",
    dashboard_path: str | None = "/pool",
) -> Metrics | None:
    """Serve Prometheus metrics at *path* and the live pool dashboard at *dashboard_path*.

    Call it after :meth:`Database.install`. Every pool of the app's Database is reported
    (the async pool, the sync pool of ``def`` endpoints, the health probe's and the
    replica's), and every request is counted by route template. Both routes stay out of
    the OpenAPI schema.

    Args:
        app: A FastAPI app.
        databases: The databases to report; by default the app's.
        enabled: Install anything at all; by default ``DB_METRICS`` (true).
        token: Bearer token required by both routes; by default ``DB_METRICS_TOKEN``
            (unset: no token). ``None`` serves them without one.
        path: Where to serve the metrics.
        dashboard_path: Where to serve the dashboard (its JSON at ``<path>/stats``);
            None for no dashboard.

    Returns:
        The :class:`~fastapi_dbpool.observe.metrics.Metrics`, or None when disabled.

    Raises:
        SettingsError: ``DB_METRICS`` or ``PROMETHEUS_MULTIPROC_DIR`` is invalid.
    """
    settings = ObservabilitySettings.from_env()
    if not (settings.metrics if enabled is None else enabled):
        return None
    chosen = databases_of(app, databases)
    secret = settings.metrics_token if token is _FROM_ENV else token
    if isinstance(secret, str):
        secret = SecretStr(secret)
    metrics = Metrics(chosen)
    app.add_middleware(RequestMetricsMiddleware, record=metrics.record_request)
    app.include_router(metrics.router(path, token=secret))
    wrap_lifespan(app, metrics.running)
    app.state.fastapi_dbpool_metrics = metrics
    if dashboard_path is not None:
        dashboard = PoolDashboard(chosen)
        app.include_router(dashboard.router(dashboard_path, token=secret))
        wrap_lifespan(app, dashboard.running)
        app.state.fastapi_dbpool_dashboard = dashboard
    return metrics
