"""The mail-proxy command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from mailproxy import __version__, logs
from mailproxy.cli import commands, lifecycle
from mailproxy.cli.instances import Instance, all_instances
from mailproxy.cli.ui import FAILED, NOT_RUNNING, OK, USAGE, CliError, Ctx
from mailproxy.config import load_settings, settings_table
from mailproxy.errors import ConfigError, StoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mail-proxy", description="Email dispatch proxy.")
    parser.add_argument("--version", action="version", version=f"mail-proxy {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run in the foreground")
    serve.add_argument("instance", nargs="?", help="instance name (default GMP_INSTANCE)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--smtp-port", type=int, dest="smtp_port")
    serve.add_argument("--data-dir", dest="data_dir")
    serve.add_argument("--db", dest="db_path")
    serve.add_argument("--config")
    sub.add_parser("settings", help="print every setting with its default (Markdown)")
    return parser


USAGE_TEXT = """usage: mail-proxy COMMAND ...

  serve [NAME] [--host H] [--port P] [--smtp-port P] [--data-dir D] [--db URL] [--config F]
  start NAME [--host H] [--port P] [--smtp-port P] [--db URL]
  stop NAME | restart NAME | list
  NAME info | NAME token [--regenerate]
  NAME tenants list | show ID | add [ID] [...] | delete ID [--yes]
  NAME TENANT accounts list | add [ID] [...] | delete ID [--yes]
  NAME TENANT messages list [--active] [--history] [--status S]
  NAME TENANT send FILE.eml... [--account ID] [--id ID] [--from A] [--to A]...
  NAME TENANT run-now
  settings

NAME: an instance; the one `make serve` runs (./data, CLI run from the checkout) is default.
Global options: --json (machine-readable output), --no-input (never prompt).
Exit codes: 0 success, 1 operation failed, 2 usage error, 3 instance not running."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    except CliError as exc:
        print(f"mail-proxy: {exc}", file=sys.stderr)
        return exc.code
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else USAGE
    except KeyboardInterrupt:
        print("mail-proxy: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, never a traceback
        print(f"mail-proxy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return FAILED


def _global_flags(args: list[str]) -> tuple[Ctx, list[str]]:
    """--json and --no-input may appear anywhere before a `--`."""
    rest: list[str] = []
    flags = {"--json": False, "--no-input": False}
    for index, arg in enumerate(args):
        if arg == "--":
            rest.extend(args[index:])
            break
        if arg in flags:
            flags[arg] = True
        else:
            rest.append(arg)
    return Ctx(json=flags["--json"], no_input=flags["--no-input"]), rest


def _dispatch(argv: list[str]) -> int:
    ctx, args = _global_flags(argv)
    if not args:
        print(USAGE_TEXT, file=sys.stderr)
        return USAGE
    head = args[0]
    if head in ("-h", "--help", "help"):
        print(USAGE_TEXT)
        return OK
    if head in ("serve", "settings", "--version"):
        return _serve(args)
    lifecycle_commands = {"start": lifecycle.cmd_start, "stop": lifecycle.cmd_stop,
                          "restart": lifecycle.cmd_restart, "list": lifecycle.cmd_list}
    if head in lifecycle_commands:
        return lifecycle_commands[head](ctx, args[1:])
    if head.startswith("-"):
        raise CliError(f"unknown option {head}; see mail-proxy --help", USAGE)
    instance = Instance.named(head)
    # A command word in NAME's place: only an instance directory of that very name makes it one.
    if head in NEEDS_NAME and not (instance.exists() and instance.dir.name == head):
        raise CliError(f"{head} needs the instance name first: usage: mail-proxy NAME "
                       f"{NEEDS_NAME[head]}; e.g. mail-proxy {_example_name()} "
                       f"{NEEDS_NAME[head].split(' |')[0]} (instances: mail-proxy list)", USAGE)
    return _instance_command(ctx, instance, args[1:])


INSTANCE_USAGE = "info | token | tenants list | TENANT messages list | ... (see mail-proxy --help)"
# Commands that follow NAME (or NAME TENANT), with what they take: a missing NAME gets this.
NEEDS_NAME = {
    "info": "info", "token": "token [--regenerate]",
    "tenants": "tenants list | show ID | add [ID] | delete ID",
    "accounts": "TENANT accounts list | add [ID] | delete ID",
    "messages": "TENANT messages list [--active] [--history] [--status S]",
    "send": "TENANT send FILE.eml... [--account ID]", "run-now": "TENANT run-now",
}
TENANT_VERBS = ("accounts", "messages", "send", "run-now")


def _example_name() -> str:
    """The name to show in an example: the one instance known here, else `default`."""
    known = all_instances()
    return known[0].name if len(known) == 1 else "default"


def _instance_command(ctx: Ctx, instance: Instance, args: list[str]) -> int:
    if not args:
        raise CliError(f"what should {instance.name} do? usage: mail-proxy {instance.name} "
                       f"{INSTANCE_USAGE}; e.g. mail-proxy {instance.name} tenants list", USAGE)
    verb, rest = args[0], args[1:]
    if verb in TENANT_VERBS and not instance.exists():
        example = _example_name()
        raise CliError(f"no instance named {instance.name}; if {instance.name} is a tenant, "
                       f"name the instance first: mail-proxy {example} {instance.name} "
                       f"{' '.join(args)}", NOT_RUNNING)
    if verb == "info":
        return lifecycle.cmd_info(ctx, instance, rest)
    if verb == "token":
        return lifecycle.cmd_token(ctx, instance, rest)
    if verb == "tenants":
        return commands.cmd_tenants(ctx, instance, rest)
    if verb in ("start", "stop", "restart") and not rest:
        raise CliError(f"the instance name comes after {verb}: mail-proxy {verb} "
                       f"{instance.name}", USAGE)
    if not rest:
        raise CliError(f"unknown command {verb!r} for {instance.name}; usage: mail-proxy "
                       f"{instance.name} {INSTANCE_USAGE}; e.g. mail-proxy {instance.name} "
                       f"tenants list", USAGE)
    tenant_commands = {"accounts": commands.cmd_accounts, "messages": commands.cmd_messages,
                       "send": commands.cmd_send, "run-now": commands.cmd_run_now}
    action = tenant_commands.get(rest[0])
    if action is None:
        raise CliError(f"unknown command {rest[0]!r} for tenant {verb}; usage: mail-proxy "
                       f"{instance.name} {verb} {' | '.join(TENANT_VERBS)} ...; e.g. "
                       f"mail-proxy {instance.name} {verb} messages list", USAGE)
    return action(ctx, instance, verb, rest[1:])


def _serve(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "settings":
        print(settings_table())
        return 0
    cli = {k: v for k, v in vars(args).items() if k not in ("command",)}
    try:
        settings = load_settings(cli)
    except ConfigError as exc:
        print(f"mail-proxy: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    from mailproxy.app import serve as run_serve

    try:
        _run(run_serve(settings))
    except (ConfigError, StoreError) as exc:
        print(f"mail-proxy: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]
