"""Settings: one frozen object built at the edge (CLI > GMP_* env > config file > defaults).

Every setting is declared once in SETTINGS with its type, default and meaning; the README
table is generated from the same list (`mail-proxy settings`).
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mailproxy.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    kind: type
    default: Any
    section: str
    help: str


def _s(name: str, kind: type, default: Any, section: str, help_text: str) -> Setting:
    return Setting(name, kind, default, section, help_text)


SETTINGS: tuple[Setting, ...] = (
    _s("instance", str, "default", "server", "Instance name used by `serve` without a name."),
    _s("data_dir", str, None, "server", "Data directory (default ~/.mail-proxy/<instance>)."),
    _s("db_path", str, None, "server",
       "SQLite path (sqlite:///path accepted; the command log is kept beside it, in "
       "<path>.commands) or postgresql:// URL (default <data_dir>/mail_service.db)."),
    _s("db_pool_size", int, 10, "server", "PostgreSQL connections per process."),
    _s("sqlite_synchronous", str, "FULL", "server",
       "FULL or NORMAL; NORMAL may lose the last acknowledged messages on power loss."),
    _s("api_token", str, None, "server",
       "Admin token (generated into <data_dir>/api_token if unset)."),
    _s("encryption_key", str, None, "server",
       "Base64 of 32 bytes; else <data_dir>/encryption.key, generated on first start (SQLite)."),
    _s("host", str, "127.0.0.1", "server", "REST API bind address."),
    _s("port", int, 8000, "server", "REST API port."),
    _s("log_level", str, "INFO", "server", "DEBUG, INFO, WARNING or ERROR."),
    _s("log_format", str, "text", "server",
       "text, or json: one JSON object per line (delivery lines carry message_id, tenant_id, "
       "account_id, outcome)."),
    _s("metrics_token", str, None, "server", "Protects /metrics when set."),
    _s("api_max_body_bytes", int, 67108864, "server", "Largest accepted REST request body."),
    _s("smtp_host", str, "127.0.0.1", "smtp", "SMTP submission listener address."),
    _s("smtp_port", int, 2525, "smtp", "SMTP submission listener port (0 = off)."),
    _s("smtp_tls_cert", str, None, "smtp", "PEM certificate enabling STARTTLS on the listener."),
    _s("smtp_tls_key", str, None, "smtp", "PEM key for smtp_tls_cert."),
    _s("smtp_tls_port", int, 0, "smtp", "Implicit-TLS submission port (0 = off)."),
    _s("smtp_max_recipients", int, 100, "smtp", "RCPT TO per message on the listener."),
    _s("smtp_auth_fail_delay_seconds", float, 1.0, "smtp", "Delay before answering a failed AUTH."),
    _s("smtp_auth_max_failures", int, 5, "smtp",
       "Failed AUTH per client IP in 10 minutes before 421."),
    _s("smtp_allow_plain_auth", bool, None, "smtp",
       "Allow AUTH without TLS (default: true only on a loopback listener)."),
    _s("smtp_max_size", int, 26214400, "smtp", "Max message bytes (listener and raw messages)."),
    _s("smtp_pool_size", int, 5, "dispatch", "Relay connections per account."),
    _s("smtp_pool_wait_seconds", float, 30.0, "dispatch", "Wait for a free pooled connection."),
    _s("smtp_connect_timeout_seconds", float, 15.0, "dispatch", "Connect + TLS + login timeout."),
    _s("smtp_send_timeout_seconds", float, 30.0, "dispatch", "Message transfer timeout."),
    _s("smtp_tls_verify", bool, True, "dispatch", "Verify relay certificates."),
    _s("smtp_unknown_host_grace_seconds", float, 60.0, "dispatch",
       "How long a relay host that does not exist (DNS NXDOMAIN) is retried before the "
       "account's messages fail."),
    _s("send_concurrency", int, 10, "dispatch", "Parallel sends per process."),
    _s("send_concurrency_per_account", int, 3, "dispatch", "Parallel sends per account."),
    _s("send_loop_interval", float, 0.5, "dispatch", "Seconds between idle dispatch cycles."),
    _s("lease_seconds", int, 300, "dispatch", "Claim lease, renewed every fifth (at most 60 s)."),
    _s("shutdown_grace_seconds", float, 30.0, "dispatch", "Time in-flight sends get at shutdown."),
    _s("default_priority", int, 2, "dispatch", "Priority of messages that give none (0-3)."),
    _s("compat_genro_header", bool, True, "dispatch",
       "Also stamp X-Genro-Mail-ID on outgoing mail."),
    _s("retry_max", int, 5, "retry", "Retries after the first attempt."),
    _s("retry_base_seconds", float, 60.0, "retry", "First nominal retry delay."),
    _s("retry_factor", float, 3.0, "retry", "Growth of the nominal delay per retry."),
    _s("retry_max_delay_seconds", float, 7200.0, "retry", "Cap of the nominal delay."),
    _s("report_retention_seconds", int, 604800, "reports", "Age after which reported messages go."),
    _s("report_timeout_seconds", float, 30.0, "reports", "Delivery-report request timeout."),
    _s("report_concurrency", int, 8, "reports", "Tenants reported in parallel."),
    _s("sync_interval", float, 300.0, "reports", "Heartbeat interval."),
    _s("sync_resync_delay", float, 1.0, "reports", "Delay of the extra sync when queued > 0."),
    _s("client_sync_url", str, None, "reports", "Fallback report URL."),
    _s("client_sync_token", str, None, "reports", "Bearer token for the fallback URL."),
    _s("client_sync_user", str, None, "reports", "Basic user for the fallback URL."),
    _s("client_sync_password", str, None, "reports", "Basic password for the fallback URL."),
    _s("command_log_retention_days", int, 90, "reports", "Command-log retention."),
    _s("attachment_roots", str, None, "attachments",
       "Comma-separated absolute directories the filesystem mode may read (unset: mode off)."),
    _s("attachment_allow_private", str, None, "attachments",
       "CIDRs/hosts exempt from the private-address rule of http_url fetches (`*` = all)."),
    _s("attachment_max_mb", float, 50.0, "attachments",
       "Largest attachment fetched (MB), enforced while streaming."),
    _s("attachment_timeout_seconds", float, 30.0, "attachments",
       "Timeout of one network fetch, redirects included."),
    _s("attachment_concurrency", int, 3, "attachments",
       "Fetches at once per account (cache hits and inline data take no slot)."),
    _s("cache_memory_max_mb", float, 50.0, "cache", "Memory tier of the attachment cache (MB)."),
    _s("cache_memory_ttl_seconds", float, 300.0, "cache", "Memory tier entry lifetime."),
    _s("cache_disk_dir", str, None, "cache",
       "Disk tier directory (default <data_dir>/cache); kept across restarts."),
    _s("cache_disk_max_mb", float, 500.0, "cache", "Disk tier size (MB)."),
    _s("cache_disk_ttl_seconds", float, 3600.0, "cache", "Disk tier entry lifetime."),
    _s("cache_disk_threshold_kb", float, 100.0, "cache",
       "Attachments from this size (KB) go to the disk tier, smaller ones to memory."),
    _s("download_secret", str, None, "attachments",
       "HMAC secret of /download links (default: generated once, stored encrypted)."),
    _s("bounce_enabled", bool, None, "bounce", "Enable the bounce mailbox poller."),
    _s("bounce_imap_host", str, None, "bounce", "Bounce IMAP host."),
    _s("bounce_imap_port", int, None, "bounce", "Bounce IMAP port."),
    _s("bounce_imap_user", str, None, "bounce", "Bounce IMAP user."),
    _s("bounce_imap_password", str, None, "bounce", "Bounce IMAP password."),
    _s("bounce_imap_folder", str, None, "bounce", "Bounce IMAP folder."),
    _s("bounce_imap_ssl", bool, None, "bounce", "Bounce IMAP over TLS."),
    _s("bounce_poll_interval", int, None, "bounce", "Bounce poll interval."),
    _s("bounce_return_path", str, None, "bounce", "Envelope sender for REST messages."),
    _s("bounce_soft_limit", int, 5, "bounce",
       "Soft bounces of one address within the window that suppress it (0 = never)."),
    _s("bounce_soft_window_seconds", int, 604800, "bounce", "Window of bounce_soft_limit."),
    _s("bounce_mark_seen", bool, False, "bounce",
       "Flag processed bounce mail \\Seen (default: the mailbox is not modified)."),
    _s("bounce_processed_folder", str, None, "bounce",
       "Move processed bounce mail to this folder (default: left in place)."),
    _s("bounce_imap_ca_file", str, None, "bounce",
       "PEM file of CA certificates trusted, besides the system store, by the bounce and PEC "
       "IMAP connections over TLS (e.g. a private CA or a self-signed server)."),
    _s("pec_poll_interval", float, 60.0, "bounce",
       "Seconds between polls of each PEC account's receipt mailbox."),
    _s("pec_timeout_seconds", int, 1800, "bounce",
       "No acceptance receipt within this many seconds of sending: pec_timeout."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    instance: str
    data_dir: Path
    db_path: str
    db_pool_size: int
    sqlite_synchronous: str
    api_token: str | None
    encryption_key: str | None
    host: str
    port: int
    log_level: str
    log_format: str
    metrics_token: str | None
    api_max_body_bytes: int
    smtp_host: str
    smtp_port: int
    smtp_tls_cert: str | None
    smtp_tls_key: str | None
    smtp_tls_port: int
    smtp_max_recipients: int
    smtp_auth_fail_delay_seconds: float
    smtp_auth_max_failures: int
    smtp_allow_plain_auth: bool | None
    smtp_max_size: int
    smtp_pool_size: int
    smtp_pool_wait_seconds: float
    smtp_connect_timeout_seconds: float
    smtp_send_timeout_seconds: float
    smtp_tls_verify: bool
    smtp_unknown_host_grace_seconds: float
    send_concurrency: int
    send_concurrency_per_account: int
    send_loop_interval: float
    lease_seconds: int
    shutdown_grace_seconds: float
    default_priority: int
    compat_genro_header: bool
    retry_max: int
    retry_base_seconds: float
    retry_factor: float
    retry_max_delay_seconds: float
    report_retention_seconds: int
    report_timeout_seconds: float
    report_concurrency: int
    sync_interval: float
    sync_resync_delay: float
    client_sync_url: str | None
    client_sync_token: str | None
    client_sync_user: str | None
    client_sync_password: str | None
    command_log_retention_days: int
    attachment_roots: str | None
    attachment_allow_private: str | None
    attachment_max_mb: float
    attachment_timeout_seconds: float
    attachment_concurrency: int
    cache_memory_max_mb: float
    cache_memory_ttl_seconds: float
    cache_disk_dir: str | None
    cache_disk_max_mb: float
    cache_disk_ttl_seconds: float
    cache_disk_threshold_kb: float
    download_secret: str | None
    bounce_enabled: bool | None
    bounce_imap_host: str | None
    bounce_imap_port: int | None
    bounce_imap_user: str | None
    bounce_imap_password: str | None
    bounce_imap_folder: str | None
    bounce_imap_ssl: bool | None
    bounce_poll_interval: int | None
    bounce_return_path: str | None
    bounce_soft_limit: int
    bounce_soft_window_seconds: int
    bounce_mark_seen: bool
    bounce_processed_folder: str | None
    bounce_imap_ca_file: str | None
    pec_poll_interval: float
    pec_timeout_seconds: int
    api_token_source: str = "generated"

    @property
    def is_postgres(self) -> bool:
        return self.db_path.startswith(("postgresql://", "postgres://"))

    @property
    def plain_auth_allowed(self) -> bool:
        if self.smtp_allow_plain_auth is not None:
            return self.smtp_allow_plain_auth
        return _is_loopback(self.smtp_host)

    @property
    def lease_renew_seconds(self) -> float:
        return min(60.0, self.lease_seconds / 5)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def parse_value(setting: Setting, raw: Any, origin: str) -> Any:
    """Convert one raw value; a bad value stops start-up naming where it came from."""
    if raw is None:
        return None
    if setting.kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{origin}: expected a boolean, got {raw!r}")
    try:
        return setting.kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: expected {setting.kind.__name__}, got {raw!r}") from None


def _read_config_file(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc}") from None
    values: dict[str, str] = {}
    for section in parser.sections():
        for key, value in parser.items(section):
            if key not in _BY_NAME:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
            if key in values:
                raise ConfigError(f"{path}: key {key!r} appears more than once")
            values[key] = value
    return values


def load_settings(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Build Settings from CLI values, GMP_* variables, the config file and defaults."""
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    env = os.environ if env is None else env
    instance = str(cli.get("instance") or env.get("GMP_INSTANCE") or "default")
    data_dir_raw = cli.get("data_dir") or env.get("GMP_DATA_DIR")
    data_dir = Path(data_dir_raw or Path.home() / ".mail-proxy" / instance).expanduser()
    file_path = config_file or cli.get("config") or env.get("GMP_CONFIG")
    path = Path(file_path) if file_path else data_dir / "config.ini"
    from_file = _read_config_file(path) if path.exists() else {}
    if file_path and not path.exists():
        raise ConfigError(f"config file not found: {path}")
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for setting in SETTINGS:
        env_name = f"GMP_{setting.name.upper()}"
        if setting.name in cli:
            raw, origin = cli[setting.name], f"--{setting.name.replace('_', '-')}"
        elif env_name in env and env[env_name] != "":
            raw, origin = env[env_name], env_name
        elif setting.name in from_file:
            raw, origin = from_file[setting.name], f"{path}: {setting.name}"
        else:
            raw, origin = setting.default, "default"
        values[setting.name] = parse_value(setting, raw, origin)
        origins[setting.name] = origin
    values["instance"] = instance
    values["data_dir"] = data_dir
    values["db_path"] = _db_url(values["db_path"], data_dir)
    values["api_token_source"] = _token_source(origins["api_token"])
    _validate(values)
    names = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in names})


def _token_source(origin: str) -> str:
    if origin.startswith("GMP_") or origin.startswith("--"):
        return "env"
    if origin == "default":
        return "generated"
    return "file"


def _db_url(raw: str | None, data_dir: Path) -> str:
    if not raw:
        return str(data_dir / "mail_service.db")
    if raw.startswith("sqlite:///"):
        return raw[len("sqlite:///") :]  # sqlite:///rel/path, sqlite:////abs/path
    return raw


def _validate(values: dict[str, Any]) -> None:
    sync = str(values["sqlite_synchronous"]).upper()
    if sync not in ("FULL", "NORMAL"):
        raise ConfigError("GMP_SQLITE_SYNCHRONOUS must be FULL or NORMAL")
    values["sqlite_synchronous"] = sync
    level = str(values["log_level"]).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("GMP_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
    values["log_level"] = level
    values["log_format"] = str(values["log_format"]).lower()
    if values["log_format"] not in ("text", "json"):
        raise ConfigError("GMP_LOG_FORMAT must be text or json")
    if not 0 <= values["default_priority"] <= 3:
        raise ConfigError("GMP_DEFAULT_PRIORITY must be between 0 and 3")
    positive = ("send_concurrency", "send_concurrency_per_account", "smtp_pool_size",
                "lease_seconds", "db_pool_size")
    for name in positive:
        if values[name] < 1:
            raise ConfigError(f"GMP_{name.upper()} must be at least 1")
    if values["retry_max"] < 0:
        raise ConfigError("GMP_RETRY_MAX must not be negative")
    if values["bounce_soft_limit"] < 0 or values["bounce_soft_window_seconds"] < 1:
        raise ConfigError("GMP_BOUNCE_SOFT_LIMIT must not be negative and "
                          "GMP_BOUNCE_SOFT_WINDOW_SECONDS must be at least 1")


def settings_table() -> str:
    """Markdown table of every setting, for the README."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = "unset" if s.default is None else str(s.default)
        rows.append(f"| `GMP_{s.name.upper()}` | `{default}` | {s.help} |")
    return "\n".join(rows)
