"""Every status the service tests observe, compared with what the OpenAPI schema declares.

The service tests' clients record each response (method, route, status). The check
``test_every_observed_status_is_declared`` runs after all other service tests (see
conftest.py) and fails on a status a route answered but its schema does not declare.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import httpx

# (METHOD, OpenAPI path) -> statuses seen.
OBSERVED: dict[tuple[str, str], set[int]] = defaultdict(set)


class Routes:
    """Matches request paths to the schema's path templates."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._patterns = [
            (re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", path) + "$"), path)
            for path in sorted(schema["paths"], key=lambda p: (p.count("{"), p))
        ]

    def template(self, path: str) -> str | None:
        """The schema's path for *path*, literal segments first; None if undeclared."""
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return None

    def declared(self, method: str, template: str) -> set[int]:
        operation = self.schema["paths"][template].get(method.lower())
        if operation is None:
            return set()
        return {int(code) for code in operation["responses"] if code.isdigit()}


def record_statuses(client: httpx.AsyncClient, schema: dict[str, Any]) -> None:
    """Record every response of *client* against *schema*'s routes."""
    routes = Routes(schema)

    async def record(response: httpx.Response) -> None:
        template = routes.template(response.request.url.path)
        method = response.request.method
        # A method the path does not declare is answered 405: no operation to check.
        if template is not None and method.lower() in routes.schema["paths"][template]:
            OBSERVED[method, template].add(response.status_code)

    client.event_hooks["response"].append(record)


def undeclared(schema: dict[str, Any]) -> dict[tuple[str, str], set[int]]:
    """Observed statuses that *schema* does not declare, by route."""
    routes = Routes(schema)
    missing = {}
    for (method, template), statuses in OBSERVED.items():
        extra = statuses - routes.declared(method, template)
        if extra:
            missing[method, template] = extra
    return missing
