"""Request shapes checked at the edge (JSON types only; content rules live in intake)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Str = StrictStr | None
AddressList = StrictStr | list[StrictStr] | None
Number = StrictInt | StrictFloat


class AttachmentShape(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: Str = None
    storage_path: Str = None
    fetch_mode: Str = None
    mime_type: Str = None
    content_md5: Str = None
    auth: dict[str, Any] | None = None


class MessageShape(BaseModel):
    """Types of one add-messages item. Unknown keys are allowed (kept in the payload)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: Str = None
    tenant_id: Str = None
    account_id: Str = None
    from_: Str = Field(default=None, alias="from")
    from_addr: Str = None
    to: AddressList = None
    cc: AddressList = None
    bcc: AddressList = None
    reply_to: Str = None
    return_path: Str = None
    subject: Str = None
    body: Str = None
    html_body: Str = None
    content_type: Str = None
    headers: dict[str, StrictStr | StrictInt | StrictFloat | None] | None = None
    message_id: Str = None
    priority: StrictInt | StrictFloat | StrictStr | None = None
    deferred_ts: Number | None = None
    batch_code: Str = None
    attachments: list[AttachmentShape] | None = None
    raw: Str = None


class ClientAuthShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    method: Literal["none", "bearer", "basic"] = "none"
    token: Str = None
    user: Str = None
    password: Str = None


class RateLimitsShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    minute: StrictInt | None = None
    hour: StrictInt | None = None
    day: StrictInt | None = None


class TenantShape(BaseModel):
    """Tenant body of POST /tenant and PUT /tenant/{id} (every field optional on PUT)."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    name: Str = None
    client_base_url: Str = None
    client_sync_path: Str = None
    client_attachment_path: Str = None
    client_auth: ClientAuthShape | None = None
    webhook_secret: Str = None
    rate_limits: RateLimitsShape | None = None
    large_file_config: dict[str, Any] | None = None
    active: StrictBool | None = None
    api_key_expires_at: Number | None = None


class AccountShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[^/\s\x00-\x1f\x7f]+$")]
    tenant_id: StrictStr
    host: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    port: Annotated[StrictInt, Field(ge=1, le=65535)]
    user: Str = None
    password: Str = None
    use_tls: StrictBool | None = None
    ttl: Annotated[StrictInt, Field(ge=1)] | None = None
    limit_per_minute: StrictInt | None = None
    limit_per_hour: StrictInt | None = None
    limit_per_day: StrictInt | None = None
    limit_behavior: Literal["defer", "reject"] | None = None
    batch_size: Annotated[StrictInt, Field(ge=1, le=10000)] | None = None
    submission_password: Str = None
    is_pec_account: StrictBool | None = None
    imap_host: Str = None
    imap_port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    imap_user: Str = None
    imap_password: Str = None
    imap_folder: Str = None
    imap_ssl: StrictBool | None = None


class IdsShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[StrictStr]


class CleanupShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    older_than_seconds: Annotated[StrictInt, Field(ge=0)] | None = None


class InstanceShape(BaseModel):
    """PUT /instance body: types only; value rules are the service's (400)."""

    model_config = ConfigDict(extra="ignore")

    name: Str = None
    api_token: Str = None
    bounce_enabled: StrictBool | None = None
    bounce_imap_host: Str = None
    bounce_imap_port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    bounce_imap_user: Str = None
    bounce_imap_password: Str = None
    bounce_imap_folder: Str = None
    bounce_imap_ssl: StrictBool | None = None
    bounce_poll_interval: StrictInt | None = None
    bounce_return_path: Str = None


class ApiKeyShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    expires_at: Number | None = None
