"""start, stop, restart, list, NAME info, NAME token."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from mailproxy import __version__
from mailproxy.cli.instances import (
    FIRST_PORT,
    Instance,
    all_instances,
    foreign_server,
    plan_settings,
    remember,
    require_running,
    spawn,
    terminate,
    unknown_instance,
    wait_healthy,
)
from mailproxy.cli.rest import ApiError
from mailproxy.cli.ui import FAILED, OK, CliError, Ctx, pairs, table
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
    if not instance.exists():
        _refuse_beside_foreign_server(instance, flags)
    instance.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    running = instance.pid()
    if running is not None:
        url = instance.url()
        ctx.emit({"name": instance.name, "status": "running", "pid": running, "url": url},
                 lambda: print(f"{instance.name} is already running at {url} (pid {running})"))
        return OK
    # ./data (`make serve`) keeps the ports its environment gives; only flags are written.
    planned = ({k: str(v) for k, v in flags.items() if v is not None} if instance.is_local
               else plan_settings(instance, flags))
    if planned:
        remember(instance, planned)
    settings = instance.settings()
    first_time = settings.api_token is None and not instance.token_path.exists()
    url = instance.url()
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


def _refuse_beside_foreign_server(instance: Instance, flags: dict[str, Any]) -> None:
    """A new instance on the next free port beside a mail-proxy that already answers on
    the first one is almost always a mistake: the user meant that one (`make serve`)."""
    if flags.get("port") is not None or os.environ.get("GMP_PORT"):
        return
    url = foreign_server(FIRST_PORT)
    if url is not None:
        raise CliError(
            f"a mail-proxy already answers at {url} (`make serve`?); run mail-proxy from its "
            f"checkout, where it is named default (see: mail-proxy list), or give --port to "
            f"start a second instance {instance.name}", FAILED)


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
        raise unknown_instance(args.name)
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
            row["url"] = instance.url()
        except CliError as exc:
            row["url"] = f"invalid config: {exc}"
        pid = instance.pid()
        row.update(status="running" if pid else "stopped", pid=pid)
        rows.append(row)
    ctx.emit(rows, lambda: table(rows, [("name", "NAME"), ("status", "STATUS"),
                                        ("pid", "PID"), ("url", "URL"),
                                        ("data_dir", "DATA DIR")]))
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
        "url": instance.url(), "data_dir": str(instance.dir), "database": database,
        "instance_id": status.get("instance_id"), "tenants": len(tenants),
        "pending_messages": status.get("pending_messages"),
    }
    ctx.emit(info, lambda: pairs(info.items()))
    return OK


def cmd_token(ctx: Ctx, instance: Instance, argv: Sequence[str]) -> int:
    args = _parse(f"{instance.name} token", argv,
                  lambda p: p.add_argument("--regenerate", action="store_true"))
    if not instance.exists():
        raise unknown_instance(instance.name)
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
