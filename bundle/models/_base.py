"""Base model and the typed reason a value is missing."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Strict, closed documents: an unknown field or a wrong type is an error on load."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


class MissingReason(StrEnum):
    """Why a value is absent, so "none found" never reads like "could not look"."""

    NOT_PERMITTED = "not_permitted"
    NOT_APPLICABLE = "not_applicable"
    NOT_SUPPORTED = "not_supported"
    TIMEOUT = "timeout"
    ERROR = "error"
    SKIPPED = "skipped"
    NOT_VISIBLE = "not_visible"  # exists, but outside what this process can see (another pid namespace)


class Unavailable(Model):
    """A value that could not be read, with why."""

    unavailable: MissingReason
    detail: str = ""
