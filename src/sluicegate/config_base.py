"""The base of every settings value object."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Frozen"]


class Frozen(BaseModel):
    """A frozen value object that rejects unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")
