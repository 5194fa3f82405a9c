"""The public API: small, documented, and without a name that is a trap used the obvious way."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
import typing

import pydantic
import pytest

import fastapi_dbpool
from fastapi_dbpool import errors


def test_the_public_api_is_small() -> None:
    assert len(fastapi_dbpool.__all__) <= 15, fastapi_dbpool.__all__
    assert sorted(fastapi_dbpool.__all__) == sorted(set(fastapi_dbpool.__all__))


def test_no_exported_name_is_a_raw_dependency_function() -> None:
    """`Depends(get_session)` would commit after the response: no such name is exported."""
    for name in fastapi_dbpool.__all__:
        value = getattr(fastapi_dbpool, name)
        assert not inspect.isasyncgenfunction(value), name
        assert not inspect.isgeneratorfunction(value), name


def test_every_dependency_alias_is_function_scoped() -> None:
    for name in fastapi_dbpool.__all__:
        value = getattr(fastapi_dbpool, name)
        if typing.get_origin(value) is not typing.Annotated:
            continue
        (depends,) = value.__metadata__
        # The commit must run before the response is sent (see request/dependencies.py);
        # DatabaseDep takes no connection and has nothing to commit.
        if name != "DatabaseDep":
            assert depends.scope == "function", name


def _documented_parameters(value: object) -> list[str]:
    """The parameters a caller passes, which the docstring must name."""
    if dataclasses.is_dataclass(value):
        return [field.name for field in dataclasses.fields(value)]
    if inspect.isclass(value):
        if issubclass(value, BaseException | pydantic.BaseModel):
            return []  # a message; settings documented field by field in the README table
        if "__init__" not in vars(value):
            return []
        value = value.__init__
    if not callable(value):
        return []
    parameters = inspect.signature(value).parameters.values()
    return [
        p.name
        for p in parameters
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


# Handed out by ConnectionDep and Database.connection(), never built by the user.
BUILT_BY_THE_LIBRARY = {"DirectConnection"}


def test_every_exported_name_is_documented() -> None:
    """Each name says what it does; one that takes arguments gives each (Args), its
    units and defaults, and what it raises or returns, as the Google style has it."""
    for name in fastapi_dbpool.__all__:
        value = getattr(fastapi_dbpool, name)
        if typing.get_origin(value) is typing.Annotated:
            continue  # aliases are documented in the README table and their module
        doc = inspect.getdoc(value)
        assert doc, name
        parameters = [] if name in BUILT_BY_THE_LIBRARY else _documented_parameters(value)
        if not parameters:
            continue
        assert len(doc) >= 200, f"{name}: a one-liner for something that takes arguments"
        section = "Attributes:" if dataclasses.is_dataclass(value) else "Args:"
        assert section in doc, f"{name}: no {section} section"
        missing = [p for p in parameters if not re.search(rf"\b{re.escape(p)}\b", doc)]
        assert not missing, f"{name}: parameters not documented: {missing}"
        if inspect.isfunction(value):
            returns = inspect.signature(value).return_annotation
            if returns not in (None, "None", inspect.Signature.empty):
                assert "Returns:" in doc, f"{name}: no Returns section"
            assert "Raises:" in doc, f"{name}: no Raises section"


def test_health_router_refuses_a_probe_timeout_that_is_not_positive() -> None:
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="probe_timeout"):
            fastapi_dbpool.health_router(probe_timeout=bad)
    assert fastapi_dbpool.health_router(probe_timeout=0.5).prefix == "/health"


def test_every_error_derives_from_the_root() -> None:
    # The module also holds the taxonomy's records (Failure, Conflict, ErrorBody): only
    # its exceptions must derive from the root.
    classes = [
        v
        for v in vars(errors).values()
        if isinstance(v, type) and issubclass(v, BaseException) and v.__module__ == errors.__name__
    ]
    assert classes
    for cls in classes:
        assert issubclass(cls, errors.DBPoolError), cls
        assert cls.__doc__, cls


def test_importing_the_library_leaves_the_cli_out() -> None:
    code = (
        "import sys, fastapi_dbpool; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich') "
        "or m.startswith('fastapi_dbpool.cli')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_the_sqlalchemy_floor_is_a_version_the_suite_ran_on() -> None:
    """pyproject's lower bound is the 2.0 release _compat.py says it was checked on."""
    import tomllib
    from pathlib import Path

    from fastapi_dbpool import _compat

    root = Path(__file__).resolve().parents[2]
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in dependencies if d.startswith("sqlalchemy")]
    floor = re.search(r">=([\d.]+)", spec)
    checked = re.search(r"Checked on SQLAlchemy (2\.0\.\d+)", _compat.__doc__ or "")
    assert floor and checked, (spec, _compat.__doc__)
    assert floor.group(1) == checked.group(1), spec
