"""The mail-proxy command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from mailproxy import __version__
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "settings":
        print(settings_table())
        return 0
    if args.command != "serve":
        _parser().print_help()
        return 2
    cli = {k: v for k, v in vars(args).items() if k not in ("command",)}
    try:
        settings = load_settings(cli)
    except ConfigError as exc:
        print(f"mail-proxy: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
