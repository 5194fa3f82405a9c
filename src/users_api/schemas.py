"""Request and response bodies. Never ORM models: a body cannot set ``id`` or ``status``.

Every request model forbids unknown fields, so a read-only field in a body (``id``,
``status``, ``created_at``…) is a 422, not silently ignored. Strings are refused if
they hold NUL or lone surrogate characters, which PostgreSQL cannot store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)
from pydantic.config import JsonDict

INT32_MAX = 2**31 - 1

ItemStatus = Literal["pending", "queued", "processing", "done", "failed"]


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ValueError("must be valid Unicode (lone surrogate found)")
    return value


def _normalise_email(value: str) -> str:
    _storable(value)
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError(f"not a valid email address: {error}") from None
    normalised = checked.normalized.lower()
    if len(normalised) > 254:
        raise ValueError("must be at most 254 characters")
    return normalised


def _utc_iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


# What the validators accept, said in the schema too (clients and the fuzzer read it):
# no NUL anywhere, and a name is more than whitespace (str.strip() strips \x1c-\x1f and
# \x85 too, which JSON Schema's \s does not cover).
_NO_NUL = "^[^\\u0000]*$"
_NOT_BLANK = "^[^\\u0000]*[^\\s\\u0000\\u001c-\\u001f\\u0085][^\\u0000]*$"

Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_storable),
    Field(json_schema_extra={"pattern": _NOT_BLANK}),
]
Title = Name
Description = Annotated[
    str,
    StringConstraints(max_length=10_000),
    AfterValidator(_storable),
    Field(json_schema_extra={"pattern": _NO_NUL}),
]
Email = Annotated[
    str,
    StringConstraints(max_length=254),
    AfterValidator(_normalise_email),
    Field(json_schema_extra={"format": "email"}),
]
RowId = Annotated[int, Field(ge=1, le=INT32_MAX)]
# ISO 8601 in UTC with an explicit offset and microseconds, the same on both databases.
Timestamp = Annotated[datetime, PlainSerializer(_utc_iso, return_type=str)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _patch_schema(schema: JsonDict, model: type[BaseModel]) -> None:
    # The fields are optional, typed "X | None" only so that an absent field can be told
    # from a given one; null is refused except where _nullable says. Say so in the schema.
    nullable: frozenset[str] = getattr(model, "_nullable", frozenset())
    properties = schema.get("properties", {})
    assert isinstance(properties, dict)
    for name, field in properties.items():
        if name in nullable or not isinstance(field, dict) or "anyOf" not in field:
            continue
        options = [option for option in field.pop("anyOf") if option != {"type": "null"}]  # type: ignore[union-attr]
        (only,) = options
        field.update(only)  # type: ignore[arg-type]
        field.pop("default", None)
    schema["minProperties"] = 1


class _Patch(_Request):
    """A partial update: at least one field, and ``null`` only where a field allows it."""

    model_config = ConfigDict(json_schema_extra=_patch_schema)

    _nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _check_fields(self) -> _Patch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        for name in self.model_fields_set - self._nullable:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, with their values."""
        return self.model_dump(include=self.model_fields_set)


class UserCreate(_Request):
    """Body of ``POST /users``."""

    name: Name
    email: Email


class UserUpdate(_Patch):
    """Body of ``PATCH /users/{id}``."""

    name: Name | None = None
    email: Email | None = None


class UserOut(BaseModel):
    """A user as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    email: str
    created_at: Timestamp


class ItemCreate(_Request):
    """Body of ``POST /items``."""

    title: Title
    description: Description | None = None
    owner_id: RowId


class ItemUpdate(_Patch):
    """Body of ``PATCH /items/{id}``; ``description: null`` clears it."""

    _nullable: ClassVar[frozenset[str]] = frozenset({"description"})

    title: Title | None = None
    description: Description | None = None


class ItemResult(BaseModel):
    """What processing found in the description."""

    words: int
    characters: int


class ItemOut(BaseModel):
    """An item as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    owner_id: int
    title: str
    description: str | None
    status: ItemStatus
    result: ItemResult | None
    error: str | None = Field(
        description="Why processing failed, in a few words (status failed); else null."
    )
    processed_at: Timestamp | None
    created_at: Timestamp


class ProcessAccepted(BaseModel):
    """Answer of ``POST /items/{id}/process``."""

    id: int
    status: ItemStatus
