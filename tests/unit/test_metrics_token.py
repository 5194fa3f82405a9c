"""The DB_METRICS_TOKEN check: Bearer for scrapers, Basic for browsers, nothing else."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from fastapi_dbpool import DatabaseSettings
from fastapi_dbpool.observe.auth import presented_token, token_matches
from fastapi_dbpool.observe.settings import ObservabilitySettings

TOKEN = SecretStr("s3cret-token")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "header",
    [
        "Bearer s3cret-token",
        "bearer s3cret-token",
        "  Bearer   s3cret-token ",
        basic("x", "s3cret-token"),
        basic("", "s3cret-token"),
    ],
)
def test_token_accepted(header: str) -> None:
    assert token_matches(TOKEN, header)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer s3cret-token2",
        "Bearer s3cret-toke",
        "Bearer S3CRET-TOKEN",
        "Token s3cret-token",
        "s3cret-token",
        basic("s3cret-token", "wrong"),
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"no-colon-s3cret-token").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:s3cret-token").decode(),
    ],
)
def test_token_refused(header: str | None) -> None:
    assert not token_matches(TOKEN, header)


def test_basic_password_may_contain_colons() -> None:
    assert presented_token(basic("user", "a:b:c")) == "a:b:c"


def test_token_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_METRICS_TOKEN", "from-env")
    monkeypatch.setenv("DB_METRICS", "false")
    monkeypatch.setenv("DB_LOG_JSON", "true")
    settings = ObservabilitySettings.from_env()
    assert settings.metrics_token is not None
    assert settings.metrics_token.get_secret_value() == "from-env"
    assert settings.metrics is False and settings.log_json is True
    assert "from-env" not in repr(settings)
    # Not the database's business: DatabaseSettings no longer has them.
    assert not {"metrics", "metrics_token", "log_json"} & set(DatabaseSettings.model_fields)


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_token_means_no_token(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    monkeypatch.setenv("DB_METRICS_TOKEN", blank)
    assert ObservabilitySettings.from_env().metrics_token is None


def test_metrics_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DB_METRICS", "DB_METRICS_TOKEN", "DB_LOG_JSON"):
        monkeypatch.delenv(name, raising=False)
    settings = ObservabilitySettings.from_env()
    assert settings.metrics is True and settings.metrics_token is None and not settings.log_json
