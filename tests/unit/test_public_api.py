"""The public API: small, documented, and without a name that is a trap used the obvious way."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

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


def test_every_exported_name_is_documented() -> None:
    for name in fastapi_dbpool.__all__:
        value = getattr(fastapi_dbpool, name)
        if typing.get_origin(value) is typing.Annotated:
            continue  # aliases are documented in the README table and their module
        assert inspect.getdoc(value), name


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
