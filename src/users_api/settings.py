"""Settings of item processing, read from the environment and checked when the app starts.

=============================  =======  ==================================================
Variable                       Default  Meaning
=============================  =======  ==================================================
``ITEM_WORKERS``               2        Items processed at once by this process (0 = none:
                                        the process only answers HTTP; others do the work).
``ITEM_LEASE_S``               30       Seconds a claim lasts; an item whose lease ran out
                                        is claimed again by any instance.
``ITEM_MAX_ATTEMPTS``          5        Claims of one item before it is ``failed``.
``ITEM_SWEEP_S``               5        Seconds between looks for work nobody announced
                                        (queued while the database was down, expired
                                        leases, other instances' items).
``ITEM_PROCESSING_DELAY_MS``   0        Artificial delay inside processing (tests, demos).
``ITEM_SHUTDOWN_GRACE_S``      10       On shutdown, seconds running items get to finish
                                        before they are released for another instance.
=============================  =======  ==================================================

A bad value stops the start with a :class:`~fastapi_dbpool.errors.SettingsError` that
names the variable, like the database settings.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fastapi_dbpool.errors import SettingsError

__all__ = ["ItemSettings"]

_ENV_NAMES: dict[str, str] = {}


def _env(name: str, field: str) -> Any:
    _ENV_NAMES[field] = name
    return AliasChoices(name, field)


class ItemSettings(BaseSettings):
    """How this process works through queued items (see the module's table)."""

    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", populate_by_name=True, frozen=True, case_sensitive=False
    )

    workers: int = Field(default=2, ge=0, le=64, validation_alias=_env("ITEM_WORKERS", "workers"))
    lease_s: float = Field(
        default=30.0, gt=0, le=24 * 3600, validation_alias=_env("ITEM_LEASE_S", "lease_s")
    )
    max_attempts: int = Field(
        default=5, ge=1, le=1000, validation_alias=_env("ITEM_MAX_ATTEMPTS", "max_attempts")
    )
    sweep_s: float = Field(
        default=5.0, gt=0, le=3600, validation_alias=_env("ITEM_SWEEP_S", "sweep_s")
    )
    processing_delay_ms: int = Field(
        default=0,
        ge=0,
        le=3600 * 1000,
        validation_alias=_env("ITEM_PROCESSING_DELAY_MS", "processing_delay_ms"),
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        validation_alias=_env("ITEM_SHUTDOWN_GRACE_S", "shutdown_grace_s"),
    )

    @model_validator(mode="after")
    def _lease_outlasts_processing(self) -> ItemSettings:
        # A worker only applies its result while its lease holds; a lease shorter than
        # the processing itself would make every attempt run out and the item fail.
        if self.processing_delay_ms / 1000 * 2 > self.lease_s:
            raise ValueError(
                f"ITEM_LEASE_S={self.lease_s:g} must be at least twice "
                f"ITEM_PROCESSING_DELAY_MS={self.processing_delay_ms} (in seconds), "
                "or every claim runs out before processing ends"
            )
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> ItemSettings:
        """Read the settings from the environment, with keyword *overrides* on top.

        Raises:
            SettingsError: a value is invalid; the message names the variable.
        """
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        if not error["loc"]:  # a check across fields: its message names the variables
            problems.append(error["msg"].removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        problems.append(f"{_ENV_NAMES.get(field, field)}: {error['msg']}")
    return "invalid item settings: " + "; ".join(problems)
