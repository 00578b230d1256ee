"""Request shapes checked at the edge (JSON types only; content rules live in intake)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from mailproxy.commands import (
    ABSENT,
    ClientAuthChange,
    InstanceChanges,
    PutAccount,
    PutTenant,
    TenantChanges,
    secret_change,
)
from mailproxy.model import Account, LimitBehavior, RateLimits
from mailproxy.offload.config import save_problem

Str = StrictStr | None
AddressList = StrictStr | list[StrictStr] | None
Number = StrictInt | StrictFloat
MAX_TS = 253402300799  # 9999-12-31T23:59:59Z: later "timestamps" are mistakes, not dates
# Integers the database stores: bounded so that no value overflows a 64-bit column.
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
# A Unix time in seconds (§1: floats accepted and truncated).
Timestamp = (Annotated[StrictInt, Field(ge=-MAX_TS, le=MAX_TS)]
             | Annotated[StrictFloat, Field(ge=-MAX_TS, le=MAX_TS, allow_inf_nan=False)])


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

    def change(self) -> ClientAuthChange:
        return ClientAuthChange(method=self.method, user=self.user,
                                token=secret_change(self.token),
                                password=secret_change(self.password))


class RateLimitsShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    minute: Int64 | None = None
    hour: Int64 | None = None
    day: Int64 | None = None

    def value(self) -> RateLimits:
        return RateLimits(minute=self.minute, hour=self.hour, day=self.day)


class LargeFileConfigShape(BaseModel):
    """§11 large_file_config: types, then the save rules (never contacts the storage)."""

    model_config = ConfigDict(extra="allow")

    enabled: StrictBool | None = None
    max_size_mb: Annotated[Number, Field(gt=0)] | None = None
    action: Literal["warn", "reject", "rewrite"] | None = None
    storage_url: Str = None
    storage_options: dict[str, Any] | None = None
    public_base_url: Str = None
    file_ttl_days: Annotated[StrictInt, Field(ge=1, le=36500)] | None = None
    lifespan_after_download_days: Annotated[StrictInt, Field(ge=0, le=36500)] | None = None

    @model_validator(mode="after")
    def _rules(self) -> LargeFileConfigShape:
        problem = save_problem(self.model_dump())
        if problem:
            raise ValueError(problem)
        return self


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
    large_file_config: LargeFileConfigShape | None = None
    active: StrictBool | None = None
    api_key_expires_at: Timestamp | None = None

    def replacement(self, tenant_id: str) -> PutTenant:
        """POST /tenant: every field given, a missing one as null."""
        auth = self.client_auth
        return PutTenant(tenant_id, TenantChanges(
            name=self.name, client_base_url=self.client_base_url,
            client_sync_path=self.client_sync_path,
            client_attachment_path=self.client_attachment_path,
            client_auth=None if auth is None else auth.change(),
            webhook_secret=secret_change(self.webhook_secret),
            rate_limits=None if self.rate_limits is None else self.rate_limits.value(),
            large_file_config=_large_file(self.large_file_config), active=self.active,
            api_key_expires_at=_seconds(self.api_key_expires_at),
        ))

    def changes(self) -> TenantChanges:
        """PUT /tenant/{id}: the fields the body names; null sets one back to its default
        (the webhook secret: clears it)."""
        given = self.model_fields_set
        auth, limits = self.client_auth, self.rate_limits

        def named(name: str, value: Any) -> Any:
            return value if name in given else ABSENT

        return TenantChanges(
            name=named("name", self.name),
            client_base_url=named("client_base_url", self.client_base_url),
            client_sync_path=named("client_sync_path", self.client_sync_path),
            client_attachment_path=named("client_attachment_path",
                                         self.client_attachment_path),
            client_auth=named("client_auth", None if auth is None else auth.change()),
            webhook_secret=named("webhook_secret", self.webhook_secret or None),
            rate_limits=named("rate_limits", None if limits is None else limits.value()),
            large_file_config=named("large_file_config",
                                    _large_file(self.large_file_config)),
            active=named("active", self.active),
            api_key_expires_at=named("api_key_expires_at",
                                     _seconds(self.api_key_expires_at)),
        )


def _seconds(value: float | None) -> int | None:
    """A timestamp from a request: floats are truncated (§1)."""
    return None if value is None else int(value)


def _large_file(shape: LargeFileConfigShape | None) -> dict[str, Any] | None:
    """large_file_config with the keys as sent (unknown ones too), none added."""
    return None if shape is None else shape.model_dump(exclude_unset=True)


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
    limit_per_minute: Int64 | None = None
    limit_per_hour: Int64 | None = None
    limit_per_day: Int64 | None = None
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

    def command(self) -> PutAccount:
        """The command of this body: what it leaves out (or sends null) takes Account's
        default, "" as imap_folder too; secrets keep on null and clear on ""."""
        given: dict[str, Any] = {
            "ttl": self.ttl, "batch_size": self.batch_size, "is_pec_account": self.is_pec_account,
            "imap_port": self.imap_port, "imap_folder": self.imap_folder or None,
            "imap_ssl": self.imap_ssl,
            "limit_behavior": None if self.limit_behavior is None
            else LimitBehavior(self.limit_behavior),
        }
        account = Account(
            tenant_id=self.tenant_id, id=self.id, host=self.host, port=self.port,
            user=self.user, use_tls=self.use_tls, imap_host=self.imap_host,
            imap_user=self.imap_user,
            limits=RateLimits(minute=self.limit_per_minute, hour=self.limit_per_hour,
                              day=self.limit_per_day),
            **{name: value for name, value in given.items() if value is not None},
        )
        return PutAccount(account, password=secret_change(self.password),
                          imap_password=secret_change(self.imap_password),
                          submission_password=secret_change(self.submission_password))


class IdsShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[StrictStr]


class CleanupShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    older_than_seconds: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None


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

    def changes(self) -> InstanceChanges:
        """The settings the body names; null sets one back to its default (the password:
        keeps it, "" clears it); a null api_token changes nothing."""
        given = self.model_fields_set
        values = {name: getattr(self, name) for name in given
                  if name not in ("api_token", "bounce_imap_password")}
        return InstanceChanges(
            **values, bounce_imap_password=secret_change(self.bounce_imap_password),
            api_token=ABSENT if self.api_token is None else self.api_token,
        )


class ApiKeyShape(BaseModel):
    model_config = ConfigDict(extra="ignore")

    expires_at: Timestamp | None = None


# -- documented bodies and responses (OpenAPI; one model per shape of the contract) ------------


class AddMessagesBody(BaseModel):
    """POST /commands/add-messages (§4.1); items are checked one by one (§4.5)."""

    model_config = ConfigDict(extra="allow")

    default_priority: StrictInt | StrictStr | None = None
    messages: Annotated[list[MessageShape], Field(max_length=1000)]


class TenantBody(TenantShape):
    """POST /tenant: a full Tenant (§7); `id` is required."""

    id: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ErrorResponse(BaseModel):
    """Every error (§1): `detail` is a text, a list of {loc, msg, type} (422) or an object."""

    detail: Any


class HealthResponse(BaseModel):
    status: StrictStr


class OkResponse(BaseModel):
    ok: bool


class StatusResponse(OkResponse):
    active: bool
    version: str
    instance_id: str
    pending_messages: int


class RejectedItem(BaseModel):
    id: str | None
    reason: str
    index: int


class AddMessagesResponse(OkResponse):
    queued: int
    rejected: list[RejectedItem]


class SuspensionResponse(OkResponse):
    tenant_id: str
    batch_code: str | None = None
    suspended_batches: list[str]
    pending_messages: int


class DeleteMessagesResponse(OkResponse):
    removed: int
    not_found: list[str]
    unauthorized: list[str]


class HistoryEntry(BaseModel):
    event_id: str
    event_type: str
    event_ts: int
    description: str | None
    metadata: dict[str, Any]
    reported_ts: int | None
    event_ts_iso: str
    reported_ts_iso: str | None


class MessageRecord(BaseModel):
    """§5.2: every key is always present (null when unset); `history` only on request."""

    pk: str
    id: str
    tenant_id: str
    tenant_name: str
    account_id: str | None
    status: Literal["pending", "scheduled", "deferred", "sending", "sent", "error", "bounced",
                    "suppressed"]
    suspended: bool
    priority: Annotated[int, Field(ge=0, le=3)]
    batch_code: str | None
    deferred_ts: int | None
    retry_count: int
    sent_ts: int | None
    error_ts: int | None
    error: str | None
    reported_ts: int | None
    bounce_type: str | None
    bounce_code: str | None
    bounce_reason: str | None
    bounce_ts: int | None
    is_pec: bool
    last_error: str | None = Field(description="Why it is not delivered yet: the final error, "
                                   "else the reason of the latest failed attempt (additive)")
    created_at: str | None
    updated_at: str | None
    # ISO-8601 UTC (`2026-12-02T13:30:52Z`) companions of the time fields (additive).
    deferred_ts_iso: str | None
    sent_ts_iso: str | None
    error_ts_iso: str | None
    reported_ts_iso: str | None
    bounce_ts_iso: str | None
    created_at_iso: str | None
    updated_at_iso: str | None
    message: dict[str, Any]
    history: list[HistoryEntry] | None = None


class MessagesResponse(OkResponse):
    messages: list[MessageRecord]
    next_cursor: str | None = Field(default=None, description=(
        "Listing every tenant (admin, no tenant_id): pass as `cursor` for the next page; "
        "null on the last page. Absent on a tenant's listing."))


class AccountInfo(BaseModel):
    """§6: the Account without secrets, plus has_* flags; every key always present."""

    id: str
    tenant_id: str
    host: str
    port: int
    user: str | None
    use_tls: bool | None
    ttl: int
    limit_per_minute: int | None
    limit_per_hour: int | None
    limit_per_day: int | None
    limit_behavior: Literal["defer", "reject"]
    batch_size: int
    is_pec_account: bool
    imap_host: str | None
    imap_port: int
    imap_user: str | None
    imap_folder: str
    imap_ssl: bool
    has_password: bool
    has_submission_password: bool
    has_imap_password: bool
    created_at: str | None
    updated_at: str | None
    created_at_iso: str | None  # ISO-8601 UTC companions (additive, §1)
    updated_at_iso: str | None


class AccountsResponse(OkResponse):
    accounts: list[AccountInfo]


class ClientAuthInfo(BaseModel):
    method: str
    user: str | None


class RateLimitsInfo(BaseModel):
    minute: int | None
    hour: int | None
    day: int | None


class TenantInfo(BaseModel):
    """§7: the Tenant without secrets, plus has_* flags; every key always present."""

    id: str
    name: str | None
    client_base_url: str | None
    client_sync_path: str
    client_attachment_path: str
    client_auth: ClientAuthInfo
    rate_limits: RateLimitsInfo | None
    large_file_config: dict[str, Any] | None
    active: bool
    api_key_expires_at: int | None
    has_client_secret: bool
    has_webhook_secret: bool
    has_api_key: bool
    suspended_batches: list[str]
    created_at: str | None
    updated_at: str | None
    api_key_expires_at_iso: str | None  # ISO-8601 UTC companions (additive, §1)
    created_at_iso: str | None
    updated_at_iso: str | None


class TenantsResponse(OkResponse):
    tenants: list[TenantInfo]


class TenantCreatedResponse(OkResponse):
    api_key: str | None = None


class ApiKeyResponse(OkResponse):
    api_key: str
    expires_at: int | None


class CleanupResponse(OkResponse):
    removed: int


class SyncStatusItem(BaseModel):
    """One tenant of GET /tenants/sync-status (§3.5); every key always present."""

    id: str
    name: str | None
    active: bool
    client_base_url: str | None
    last_sync_ts: int | None
    next_sync_due: bool
    next_sync_ts: int | None
    in_dnd: bool
    pending_events: int
    consecutive_failures: int
    retry_at: int | None
    last_error: str | None


class SyncStatusResponse(OkResponse):
    sync_interval_seconds: int
    tenants: list[SyncStatusItem]


class InstanceResponse(OkResponse):
    """GET /instance (§3.6). Not a listed record: a null-valued key may be omitted (§1)."""

    name: str | None = None
    edition: Literal["ee"]
    bounce_enabled: bool
    bounce_imap_host: str | None = None
    bounce_imap_port: int
    bounce_imap_user: str | None = None
    has_bounce_imap_password: bool
    bounce_imap_folder: str
    bounce_imap_ssl: bool
    bounce_poll_interval: int
    bounce_return_path: str | None = None
    created_at: str | None = None
    updated_at: str | None = None


class ReloadBounceResponse(OkResponse):
    bounce_enabled: bool


class CommandLogItem(BaseModel):
    """One GET /command-log row (§3.7); the payload is redacted."""

    id: int
    command_ts: int
    endpoint: str
    tenant_id: str | None = None
    payload: Any
    response_status: int


class CommandLogResponse(OkResponse):
    total: int
    commands: list[CommandLogItem]


class CommandExportItem(BaseModel):
    """One GET /command-log/export row (§3.7); secret keys are removed from the payload."""

    endpoint: str
    tenant_id: str | None = None
    payload: Any
    command_ts: int


class CommandExportResponse(OkResponse):
    commands: list[CommandExportItem]
