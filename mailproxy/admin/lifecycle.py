"""start, stop, restart, list, NAME info, NAME token."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from mailproxy import __version__
from mailproxy.admin.instances import (
    Instance,
    all_instances,
    base_url,
    plan_settings,
    remember,
    require_running,
    spawn,
    terminate,
    wait_healthy,
)
from mailproxy.admin.rest import ApiError
from mailproxy.admin.ui import FAILED, OK, CliError, Ctx, pairs, table
from mailproxy.tokens import new_token


def _parse(prog: str, argv: Sequence[str], build: Any = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"mail-proxy {prog}")
    if build is not None:
        build(parser)
    return parser.parse_args(list(argv))


def _start_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--smtp-port", type=int, dest="smtp_port")
    parser.add_argument("--db", dest="db_path", help="database path or postgresql:// URL")


def cmd_start(ctx: Ctx, argv: Sequence[str]) -> int:
    args = _parse("start", argv, _start_flags)
    flags = {"host": args.host, "port": args.port, "smtp_port": args.smtp_port,
             "db_path": args.db_path}
    return start(ctx, Instance.named(args.name), flags)


def start(ctx: Ctx, instance: Instance, flags: dict[str, Any]) -> int:
    instance.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    running = instance.pid()
    if running is not None:
        url = base_url(instance.settings())
        ctx.emit({"name": instance.name, "status": "running", "pid": running, "url": url},
                 lambda: print(f"{instance.name} is already running at {url} (pid {running})"))
        return OK
    planned = plan_settings(instance, flags)
    if planned:
        remember(instance, planned)
    settings = instance.settings()
    first_time = settings.api_token is None and not instance.token_path.exists()
    url = base_url(settings)
    process = spawn(instance)
    wait_healthy(instance, process, url)
    token = instance.admin_token(settings) if first_time else None
    result = {"name": instance.name, "status": "running", "pid": process.pid, "url": url,
              "data_dir": str(instance.dir), "admin_token": token}

    def render() -> None:
        print(f"{instance.name} is running at {url} (pid {process.pid})")
        if token is not None:
            print(f"admin token (shown once; later: mail-proxy {instance.name} token): {token}")

    ctx.emit(result, render)
    return OK


def cmd_stop(ctx: Ctx, argv: Sequence[str]) -> int:
    args = _parse("stop", argv, lambda p: p.add_argument("name"))
    return stop(ctx, Instance.named(args.name))


def stop(ctx: Ctx, instance: Instance) -> int:
    pid = instance.pid()
    if pid is None:
        instance.pid_path.unlink(missing_ok=True)
        ctx.emit({"name": instance.name, "status": "stopped"},
                 lambda: print(f"{instance.name} is not running"))
        return OK
    killed = terminate(instance, pid, instance.settings().shutdown_grace_seconds)
    how = "killed after the grace period" if killed else "stopped"
    ctx.emit({"name": instance.name, "status": "stopped", "killed": killed},
             lambda: print(f"{instance.name} {how}"))
    return OK


def cmd_restart(ctx: Ctx, argv: Sequence[str]) -> int:
    args = _parse("restart", argv, lambda p: p.add_argument("name"))
    instance = Instance.named(args.name)
    if not instance.exists():
        raise CliError(f"no instance named {args.name}; create it with: "
                       f"mail-proxy start {args.name}", FAILED)
    _quiet_stop(instance)
    return start(ctx, instance, {})


def _quiet_stop(instance: Instance) -> None:
    pid = instance.pid()
    if pid is not None:
        terminate(instance, pid, instance.settings().shutdown_grace_seconds)


def cmd_list(ctx: Ctx, argv: Sequence[str]) -> int:
    _parse("list", argv)
    rows = []
    for instance in all_instances():
        row: dict[str, Any] = {"name": instance.name, "data_dir": str(instance.dir)}
        try:
            row["url"] = base_url(instance.settings())
        except CliError as exc:
            row["url"] = f"invalid config: {exc}"
        pid = instance.pid()
        row.update(status="running" if pid else "stopped", pid=pid)
        rows.append(row)
    ctx.emit(rows, lambda: table(rows, [("name", "NAME"), ("status", "STATUS"),
                                        ("pid", "PID"), ("url", "URL")]))
    return OK


# -- NAME info / NAME token --------------------------------------------------------------------

def cmd_info(ctx: Ctx, instance: Instance, argv: Sequence[str]) -> int:
    _parse(f"{instance.name} info", argv)
    rest = instance.rest()
    require_running(instance)
    settings = instance.settings()
    status = rest.get("/status")
    tenants = rest.get("/tenants")["tenants"]
    database = settings.db_path.split("@")[-1] if settings.is_postgres else settings.db_path
    info = {
        "name": instance.name, "status": "running", "pid": instance.pid(),
        "version": status.get("version"), "cli_version": __version__,
        "url": base_url(settings), "data_dir": str(instance.dir), "database": database,
        "instance_id": status.get("instance_id"), "tenants": len(tenants),
        "pending_messages": status.get("pending_messages"),
    }
    ctx.emit(info, lambda: pairs(info.items()))
    return OK


def cmd_token(ctx: Ctx, instance: Instance, argv: Sequence[str]) -> int:
    args = _parse(f"{instance.name} token", argv,
                  lambda p: p.add_argument("--regenerate", action="store_true"))
    if not instance.exists():
        raise CliError(f"no instance named {instance.name}", FAILED)
    settings = instance.settings()
    if not args.regenerate:
        token = instance.admin_token(settings)
        ctx.emit({"admin_token": token}, lambda: print(token))
        return OK
    if settings.api_token_source != "generated":
        where = "GMP_API_TOKEN" if settings.api_token_source == "env" else "the config file"
        raise CliError(f"the admin token is managed by {where}; change it there", FAILED)
    rest = instance.rest()
    token = new_token()
    try:
        rest.call("PUT", "/instance", body={"api_token": token})
    except ApiError as exc:
        raise CliError(f"could not set a new token: {exc}", FAILED) from None
    ctx.emit({"admin_token": token}, lambda: print(token))
    return OK
