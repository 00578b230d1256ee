"""Request and response shapes of the suppression routes (§12.4)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictStr

from mailproxy.ingress.schemas import OkResponse


class SuppressionsShape(BaseModel):
    """POST/DELETE body: types only; address rules are the service's (400)."""

    model_config = ConfigDict(extra="ignore")

    addresses: list[StrictStr] = []
    reason: StrictStr | None = None


class SuppressionItem(BaseModel):
    address: str
    reason: str | None
    source: str  # "bounce" or "manual" (§12.4)
    bounce_type: str | None  # additive: "hard"/"soft" for bounce entries
    bounce_code: str | None
    message_id: str | None
    created_ts: int


class SuppressionsResponse(OkResponse):
    total: int
    suppressions: list[SuppressionItem]


class SuppressionsAddedResponse(OkResponse):
    added: int


class SuppressionsRemovedResponse(OkResponse):
    removed: int
