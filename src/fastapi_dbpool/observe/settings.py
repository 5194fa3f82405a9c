"""Settings of the observability layer, apart from the database's.

Read from the environment by :func:`~fastapi_dbpool.install_metrics` and
:func:`~fastapi_dbpool.configure_logging` when they are called; their keyword
arguments take precedence.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import SettingsError

__all__ = ["ObservabilitySettings"]


class ObservabilitySettings(BaseSettings):
    """``DB_METRICS``, ``DB_METRICS_TOKEN`` and ``DB_LOG_JSON``."""

    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", populate_by_name=True, frozen=True, case_sensitive=False
    )

    metrics: bool = Field(
        default=True,
        validation_alias=AliasChoices("DB_METRICS", "metrics"),
        description="Serve /metrics and the /pool dashboard; false installs neither.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DB_METRICS_TOKEN", "metrics_token"),
        description="When set, /metrics and /pool require Authorization: Bearer <token>.",
    )
    log_json: bool = Field(
        default=False,
        validation_alias=AliasChoices("DB_LOG_JSON", "log_json"),
        description="configure_logging() writes one JSON object per line instead of text.",
    )

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: Any) -> Any:
        # DB_METRICS_TOKEN= (empty) in a compose file means "no token", not "the empty token".
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str) and not raw.strip():
            return None
        return value

    @classmethod
    def from_env(cls) -> ObservabilitySettings:
        """Read the settings from the environment.

        Raises:
            SettingsError: a value is invalid; the message names the variable.
        """
        try:
            return cls()
        except ValidationError as exc:
            problems = [
                f"{error['loc'][0] if error['loc'] else '?'}: {error['msg']}"
                for error in exc.errors(include_url=False, include_input=False)
            ]
            names = {"metrics": "DB_METRICS", "metrics_token": "DB_METRICS_TOKEN"}
            names["log_json"] = "DB_LOG_JSON"
            text = "; ".join(problems)
            for field, env in names.items():
                text = text.replace(f"{field}:", f"{env}:")
            raise SettingsError("invalid observability settings: " + text) from None
