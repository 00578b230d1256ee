"""NAME tenants ..., NAME TENANT accounts|messages|send|run-now: REST calls to the instance."""

from __future__ import annotations

import argparse
import base64
import sys
import uuid
from collections.abc import Callable, Sequence
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from mailproxy.cli.instances import Instance, require_running
from mailproxy.cli.rest import ApiError, Rest
from mailproxy.cli.ui import (
    FAILED,
    OK,
    USAGE,
    CliError,
    Ctx,
    Progress,
    pairs,
    readable_time,
    table,
)

RESERVED_TENANTS = frozenset({"tenants", "info", "token"})
BATCH_MESSAGES = 200
BATCH_BYTES = 16 * 1024 * 1024  # base64 per request, far below the API body limit

Command = Callable[[Ctx, Rest, argparse.Namespace], int]


def _parser(prog: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"mail-proxy {prog}")


def _connect(instance: Instance) -> Rest:
    rest = instance.rest()
    require_running(instance)
    return rest


# -- tenants ---------------------------------------------------------------------------------

TENANT_COLUMNS = [("id", "ID"), ("name", "NAME"), ("active", "ACTIVE"),
                  ("client_base_url", "BASE URL"), ("has_api_key", "TOKEN"),
                  ("suspended_batches", "SUSPENDED")]


def _tenants_parser(name: str) -> argparse.ArgumentParser:
    parser = _parser(f"{name} tenants")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    show = sub.add_parser("show")
    show.add_argument("tenant_id")
    delete = sub.add_parser("delete")
    delete.add_argument("tenant_id")
    delete.add_argument("--yes", action="store_true")
    add = sub.add_parser("add")
    add.add_argument("tenant_id", nargs="?")
    add.add_argument("--name")
    add.add_argument("--base-url", dest="client_base_url")
    add.add_argument("--sync-path", dest="client_sync_path")
    add.add_argument("--attachment-path", dest="client_attachment_path")
    add.add_argument("--auth-method", choices=("none", "bearer", "basic"))
    add.add_argument("--auth-token")
    add.add_argument("--auth-user")
    add.add_argument("--auth-password")
    add.add_argument("--webhook-secret")
    return parser


def cmd_tenants(ctx: Ctx, instance: Instance, argv: Sequence[str]) -> int:
    args = _tenants_parser(instance.name).parse_args(list(argv))
    actions: dict[str, Command] = {"list": _tenants_list, "show": _tenants_show,
                                   "delete": _tenants_delete, "add": _tenants_add}
    return actions[args.action](ctx, _connect(instance), args)


def _tenants_list(ctx: Ctx, rest: Rest, args: argparse.Namespace) -> int:
    tenants = rest.get("/tenants")["tenants"]
    ctx.emit(tenants, lambda: table(tenants, TENANT_COLUMNS))
    return OK


def _tenants_show(ctx: Ctx, rest: Rest, args: argparse.Namespace) -> int:
    tenant = rest.get(f"/tenant/{args.tenant_id}")
    ctx.emit(tenant, lambda: pairs(tenant.items()))
    return OK


def _tenants_delete(ctx: Ctx, rest: Rest, args: argparse.Namespace) -> int:
    ctx.confirm(f"Delete tenant {args.tenant_id} and all its accounts and messages?", args.yes)
    rest.call("DELETE", f"/tenant/{args.tenant_id}")
    ctx.emit({"ok": True, "deleted": args.tenant_id},
             lambda: print(f"tenant {args.tenant_id} deleted"))
    return OK


def _client_auth(ctx: Ctx, args: argparse.Namespace) -> dict[str, Any] | None:
    method = args.auth_method
    if method is None:
        return None
    auth: dict[str, Any] = {"method": method}
    if method == "bearer":
        auth["token"] = args.auth_token or ctx.ask("Bearer token", "--auth-token", secret=True)
    elif method == "basic":
        auth["user"] = args.auth_user or ctx.ask("User", "--auth-user")
        auth["password"] = args.auth_password or ctx.ask("Password", "--auth-password",
                                                         secret=True)
    return auth


def _tenants_add(ctx: Ctx, rest: Rest, args: argparse.Namespace) -> int:
    tenant_id = args.tenant_id or ctx.ask("Tenant id", "TENANT_ID")
    if tenant_id in RESERVED_TENANTS:
        raise CliError(f"{tenant_id!r} is reserved and cannot be a tenant id in the CLI", USAGE)
    try:
        rest.get(f"/tenant/{tenant_id}")
    except ApiError as exc:
        if exc.status != 404:
            raise
    else:
        raise CliError(f"tenant {tenant_id} already exists; see: mail-proxy {rest.name} tenants "
                       f"show {tenant_id}", FAILED)
    body: dict[str, Any] = {"id": tenant_id}
    for key in ("name", "client_base_url", "client_sync_path", "client_attachment_path",
                "webhook_secret"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    auth = _client_auth(ctx, args)
    if auth is not None:
        body["client_auth"] = auth
    created = rest.call("POST", "/tenant", body=body)
    result = {"ok": True, "id": tenant_id, "api_key": created.get("api_key")}

    def render() -> None:
        print(f"tenant {tenant_id} created")
        print(f"tenant token (shown once): {created.get('api_key')}")

    ctx.emit(result, render)
    return OK


# -- accounts --------------------------------------------------------------------------------

ACCOUNT_COLUMNS = [("id", "ID"), ("host", "HOST"), ("port", "PORT"), ("user", "USER"),
                   ("use_tls", "TLS"), ("has_password", "PASSWORD"),
                   ("limit_per_minute", "/MIN"), ("limit_per_hour", "/HOUR"),
                   ("limit_per_day", "/DAY"), ("limit_behavior", "OVER LIMIT")]


def _accounts_parser(prog: str) -> argparse.ArgumentParser:
    parser = _parser(f"{prog} accounts")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    delete = sub.add_parser("delete")
    delete.add_argument("account_id")
    delete.add_argument("--yes", action="store_true")
    add = sub.add_parser("add")
    add.add_argument("account_id", nargs="?")
    add.add_argument("--host")
    add.add_argument("--port", type=int)
    add.add_argument("--user")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password")
    secret.add_argument("--password-stdin", action="store_true")
    tls = add.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="use_tls", action="store_const", const=True)
    tls.add_argument("--no-tls", dest="use_tls", action="store_const", const=False)
    tls.add_argument("--tls-auto", dest="use_tls", action="store_const", const=None)
    add.add_argument("--limit-minute", type=int, dest="limit_per_minute")
    add.add_argument("--limit-hour", type=int, dest="limit_per_hour")
    add.add_argument("--limit-day", type=int, dest="limit_per_day")
    add.add_argument("--limit-behavior", choices=("defer", "reject"))
    add.add_argument("--batch-size", type=int)
    return parser


def cmd_accounts(ctx: Ctx, instance: Instance, tenant_id: str, argv: Sequence[str]) -> int:
    args = _accounts_parser(f"{instance.name} {tenant_id}").parse_args(list(argv))
    args.tenant_id = tenant_id
    actions: dict[str, Command] = {"list": _accounts_list, "delete": _accounts_delete,
                                   "add": _accounts_add}
    return actions[args.action](ctx, _connect(instance), args)


def _accounts_list(ctx: Ctx, rest: Rest, args: argparse.Namespace) -> int:
    accounts = rest.get("/accounts", tenant_id=args.tenant_id)["accounts"]
    ctx.emit(accounts, lambda: table(accounts, ACCOUNT_COLUMNS))
    return OK


def _accounts_delete(ctx: Ctx, rest: Rest, args: argparse.Namespace) -> int:
    ctx.confirm(f"Delete account {args.account_id} of tenant {args.tenant_id}?", args.yes)
    rest.call("DELETE", f"/account/{args.account_id}", query={"tenant_id": args.tenant_id})
    ctx.emit({"ok": True, "deleted": args.account_id},
             lambda: print(f"account {args.account_id} deleted"))
    return OK


def _password(ctx: Ctx, args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if args.password is not None:
        return str(args.password)
    if args.user and ctx.interactive:
        return ctx.ask(f"Password for {args.user} (empty for none)", "--password",
                       secret=True) or None
    return None


def _accounts_add(ctx: Ctx, rest: Rest, args: argparse.Namespace) -> int:
    account_id = args.account_id or ctx.ask("Account id", "ACCOUNT_ID")
    host = args.host or ctx.ask("SMTP host", "--host")
    port = args.port if args.port is not None else _int(ctx.ask("SMTP port", "--port"), "port")
    body: dict[str, Any] = {"id": account_id, "tenant_id": args.tenant_id, "host": host,
                            "port": port, "use_tls": args.use_tls}
    for key in ("user", "limit_per_minute", "limit_per_hour", "limit_per_day",
                "limit_behavior", "batch_size"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    password = _password(ctx, args)
    if password is not None:
        body["password"] = password
    rest.call("POST", "/account", body=body)
    ctx.emit({"ok": True, "id": account_id},
             lambda: print(f"account {account_id} saved for tenant {args.tenant_id}"))
    return OK


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliError(f"{name} must be a number", USAGE) from None


# -- messages --------------------------------------------------------------------------------

MESSAGE_COLUMNS = [("id", "ID"), ("status", "STATUS"), ("account_id", "ACCOUNT"),
                   ("priority", "PRI"), ("batch_code", "BATCH"), ("created_at", "CREATED"),
                   ("retry_count", "RETRIES"), ("next_try_ts", "NEXT TRY"),
                   ("last_error", "ERROR")]
WAITING = ("scheduled", "deferred")


def cmd_messages(ctx: Ctx, instance: Instance, tenant_id: str, argv: Sequence[str]) -> int:
    parser = _parser(f"{instance.name} {tenant_id} messages")
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list")
    listing.add_argument("--active", action="store_true")
    listing.add_argument("--history", action="store_true")
    listing.add_argument("--status")
    listing.add_argument("--limit", type=int)
    args = parser.parse_args(list(argv))
    rest = _connect(instance)
    messages = rest.get("/messages", tenant_id=tenant_id, active_only=args.active,
                        include_history=args.history, status=args.status,
                        limit=args.limit)["messages"]

    def render() -> None:
        shown = [{**m, "next_try_ts": m.get("deferred_ts") if m.get("status") in WAITING
                  else None} for m in messages]
        table(shown, MESSAGE_COLUMNS)
        for record in messages if args.history else []:
            for event in record.get("history") or []:
                print(f"  {record['id']}: {readable_time(event['event_ts'])} "
                      f"{event['event_type']} {event.get('description') or ''}".rstrip())

    ctx.emit(messages, render)
    return OK


def cmd_run_now(ctx: Ctx, instance: Instance, tenant_id: str, argv: Sequence[str]) -> int:
    _parser(f"{instance.name} {tenant_id} run-now").parse_args(list(argv))
    _connect(instance).call("POST", "/commands/run-now", query={"tenant_id": tenant_id})
    ctx.emit({"ok": True}, lambda: print("dispatcher and report loop woken"))
    return OK


# -- send ------------------------------------------------------------------------------------

def _send_parser(prog: str) -> argparse.ArgumentParser:
    parser = _parser(f"{prog} send")
    parser.add_argument("files", nargs="+", metavar="FILE.eml")
    parser.add_argument("--account")
    parser.add_argument("--id", dest="message_id")
    parser.add_argument("--from", dest="sender")
    parser.add_argument("--to", action="append", default=[])
    parser.add_argument("--priority")
    parser.add_argument("--batch")
    parser.add_argument("--deferred-ts", type=int)
    return parser


def cmd_send(ctx: Ctx, instance: Instance, tenant_id: str, argv: Sequence[str]) -> int:
    args = _send_parser(f"{instance.name} {tenant_id}").parse_args(list(argv))
    if args.message_id and len(args.files) > 1:
        raise CliError("--id is allowed only with a single file", USAGE)
    files = [_readable(Path(f)) for f in args.files]
    rest = _connect(instance)
    account = args.account or _only_account(rest, tenant_id)
    messages = [_raw_message(path, tenant_id, account, args) for path in files]
    queued, rejected = _post_in_batches(rest, messages, ctx)
    result = {"queued": queued, "rejected": rejected}

    def render() -> None:
        for message_id in queued:
            print(message_id)
        for item in rejected:
            print(f"mail-proxy: {item['id']}: {item['reason']}", file=sys.stderr)

    ctx.emit(result, render)
    return FAILED if rejected else OK


def _readable(path: Path) -> Path:
    if not path.is_file():
        raise CliError(f"{path}: no such file", USAGE)
    return path


def _only_account(rest: Rest, tenant_id: str) -> str:
    accounts = rest.get("/accounts", tenant_id=tenant_id)["accounts"]
    if len(accounts) != 1:
        raise CliError(f"tenant {tenant_id} has {len(accounts)} accounts; choose one with "
                       "--account", USAGE)
    return str(accounts[0]["id"])


def _addresses(values: Sequence[str]) -> list[str]:
    return [addr for _name, addr in getaddresses(list(values)) if addr]


def _raw_message(path: Path, tenant_id: str, account: str,
                 args: argparse.Namespace) -> dict[str, Any]:
    data = path.read_bytes()
    headers = BytesHeaderParser().parsebytes(data)
    sender = args.sender or str(headers.get("From") or "")
    if not sender:
        raise CliError(f"{path}: no From header; give --from", USAGE)
    message: dict[str, Any] = {
        "id": args.message_id or f"cli-{uuid.uuid4()}", "tenant_id": tenant_id,
        "account_id": account, "from": sender,
        "raw": base64.b64encode(data).decode("ascii"),
    }
    if args.to:
        message["to"] = list(args.to)
    else:
        for key in ("to", "cc", "bcc"):
            found = _addresses([str(v) for v in headers.get_all(key, [])])
            if found:
                message[key] = found
        if "to" not in message:
            raise CliError(f"{path}: no To header; give --to", USAGE)
    optional = {"priority": args.priority, "batch_code": args.batch,
                "deferred_ts": args.deferred_ts}
    message.update({k: v for k, v in optional.items() if v is not None})
    return message


def _batches(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    batches: list[list[dict[str, Any]]] = [[]]
    size = 0
    for message in messages:
        weight = len(message["raw"])
        if batches[-1] and (len(batches[-1]) >= BATCH_MESSAGES or size + weight > BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(message)
        size += weight
    return batches


def _post_in_batches(rest: Rest, messages: list[dict[str, Any]], ctx: Ctx
                     ) -> tuple[list[str], list[dict[str, Any]]]:
    progress = Progress(len(messages), enabled=not ctx.json)
    queued: list[str] = []
    rejected: list[dict[str, Any]] = []
    for batch in _batches(messages):
        try:
            answer = rest.call("POST", "/commands/add-messages", body={"messages": batch})
        except ApiError as exc:
            if exc.status != 400 or not isinstance(exc.detail, dict):
                raise
            answer = exc.detail
        refused = {item["index"]: item for item in answer.get("rejected", [])}
        rejected.extend(refused.values())
        queued.extend(m["id"] for i, m in enumerate(batch) if i not in refused)
        progress.advance(len(batch))
    return queued, rejected
