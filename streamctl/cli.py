"""The command line: ``streamctl serve``, ``streamctl migrate``, and the client commands
``streamctl runs …`` and ``streamctl chat`` (in ``console.py``).

Every flag has a ``STREAMCTL_*`` environment variable; a flag wins over its variable.
"""

from __future__ import annotations

import argparse
import os
import signal
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
    serve.add_argument("--backend", choices=["sqlite", "redis"], help="default sqlite")
    serve.add_argument("--redis-url", dest="redis_url", help="with --backend redis: redis://...")
    serve.add_argument(
        "--workers", type=int, help="server processes on one port (default 1; --backend redis)"
    )
    serve.add_argument("--agent", help="'demo' (default), 'openai' or MODULE:ATTR")
    serve.add_argument("--model", help="the chat model's name, for --agent openai")
    serve.add_argument(
        "--log-level",
        dest="log_level",
        type=str.lower,
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="default info",
    )
    serve.add_argument(
        "--log-format",
        dest="log_format",
        choices=["text", "json"],
        help="log lines as text (default) or one JSON object per line",
    )
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
            status = run_command(args)
            sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
            return status
        except KeyboardInterrupt:  # `runs tail` interrupted (chat handles its own)
            return 130
        except StreamctlError as exc:
            print(f"streamctl: {exc.message}", file=sys.stderr)
            return 1
        except httpx.TransportError as exc:
            print(f"streamctl: cannot reach the server: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            return _reader_gone()
    if args.command == "serve":
        # `--agent my_agents:attr` finds my_agents.py in the current directory, as `uvicorn
        # main:app` does: the `streamctl` script's own sys.path[0] is its bin directory.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
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


def _reader_gone() -> int:
    """The reader of stdout went away (``streamctl runs tail … | head``): end quietly.

    stdout is pointed at /dev/null so that the interpreter's final flush of what is still
    buffered does not raise again; the status is the shell's for a process ended by SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE
