"""The command line: ``streamctl serve``, ``streamctl migrate``, and the client commands
``streamctl runs …`` and ``streamctl chat`` (in ``console.py``).

Every flag has a ``STREAMCTL_*`` environment variable; a flag wins over its variable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio
import httpx

from . import __version__
from .console import add_commands, run_command
from .errors import StreamctlError
from .settings import Settings
from .store import migrate_file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamctl", description="Stream AI-agent runs over SSE: stoppable, resumable."
    )
    parser.add_argument("--version", action="version", version=f"streamctl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default 8000)")
    serve.add_argument("--db", help="SQLite file (default ./streamctl.db)")
    serve.add_argument("--agent", help="'demo' (default), 'openai' or MODULE:ATTR")
    serve.add_argument("--model", help="the chat model's name, for --agent openai")
    serve.add_argument("--log-level", dest="log_level", help="debug, info, warning, error")
    serve.add_argument("--auth", choices=["none", "api-key", "jwt"], help="default none")
    serve.add_argument(
        "--allow-no-auth",
        dest="allow_no_auth",
        action="store_const",
        const=True,
        help="serve a non-loopback address with auth=none anyway (dangerous)",
    )

    migrate = commands.add_parser("migrate", help="create or upgrade the SQLite schema")
    migrate.add_argument("--db", help="SQLite file (default ./streamctl.db)")
    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("runs", "chat"):
        try:
            return run_command(args)
        except StreamctlError as exc:
            print(f"streamctl: {exc.message}", file=sys.stderr)
            return 1
        except httpx.TransportError as exc:
            print(f"streamctl: cannot reach the server: {exc}", file=sys.stderr)
            return 1
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = Settings.from_env(**overrides)
        if args.command == "migrate":
            applied = anyio.run(migrate_file, settings.db)
            done = ", ".join(applied) if applied else "nothing (up to date)"
            print(f"{settings.db}: applied {done}")
            return 0
        from .server import serve

        return serve(settings)
    except StreamctlError as exc:
        print(f"streamctl: {exc.message}", file=sys.stderr)
        return 2
