"""The client side of the command line: ``streamctl runs …`` and ``streamctl chat``.

A sync surface over ``streamctl.client.Client``. The server's address comes from ``--url`` or
``STREAMCTL_URL`` (default ``http://127.0.0.1:8000``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

import anyio

from .client import Client
from .events import (
    Custom,
    Done,
    ErrorEvent,
    Event,
    Interrupt,
    MessageChunk,
    RunStarted,
    ToolEnd,
    ToolStart,
)

DEFAULT_URL = "http://127.0.0.1:8000"
STATUSES = ("queued", "running", "completed", "cancelled", "failed", "timed_out", "interrupted")
_LIST_ROW = "{:32}  {:20}  {:11}  {:>6}  {:19}  {}"


def add_commands(commands: Any) -> None:
    """Add ``runs`` and ``chat`` to the CLI's subcommands."""
    runs = commands.add_parser("runs", help="list, show, follow and stop runs on a server")
    _client_options(runs)
    actions = runs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="runs, newest first")
    listing.add_argument("--thread", help="only the runs of this thread")
    listing.add_argument("--status", choices=STATUSES, help="only the runs with this status")
    listing.add_argument("--limit", type=int, default=20)
    actions.add_parser("show", help="a run's snapshot, as JSON").add_argument("run_id")
    tail = actions.add_parser("tail", help="follow a run's events (resumes after drops)")
    tail.add_argument("run_id")
    tail.add_argument("--after", type=int, default=0, help="start after this event id")
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    actions.add_parser("stop", help="stop a run; waits until it has stopped").add_argument("run_id")
    for action in actions.choices.values():
        # `streamctl runs list --url …` as well as `streamctl runs --url … list`. SUPPRESS: an
        # option not given after the action leaves the one given before it in place.
        _client_options(action, default=argparse.SUPPRESS)

    chat = commands.add_parser("chat", help="send a message and stream the answer (Ctrl-C stops)")
    _client_options(chat)
    chat.add_argument("text", help="the message")
    chat.add_argument("--thread", help="continue this thread (default: a new one)")
    chat.add_argument("--json", action="store_true", help="one JSON object per event")


def _client_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument(
        "--url",
        default=default,
        help=f"server address (default $STREAMCTL_URL or {DEFAULT_URL})",
    )
    parser.add_argument("--token", default=default, help="bearer token (default $STREAMCTL_TOKEN)")


def run_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    url = args.url or os.environ.get("STREAMCTL_URL", DEFAULT_URL)
    token = args.token or os.environ.get("STREAMCTL_TOKEN")
    if args.command == "chat":
        return _chat(url, token, args, out)
    return anyio.run(_runs, Client(url, token=token), args, out)


async def _runs(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    async with client:
        if args.action == "list":
            runs = await client.list_runs(args.thread, args.limit, status=args.status)
            print(
                _LIST_ROW.format("RUN", "THREAD", "STATUS", "EVENTS", "CREATED", "OUTPUT"), file=out
            )
            for run in runs:
                text = run["output"]["text"].replace("\n", " ")
                preview = text[:40] + ("…" if len(text) > 40 else "")
                row = (run["run_id"], run["thread_id"][:20], run["status"], run["last_seq"])
                print(_LIST_ROW.format(*row, run["created_at"][:19], preview), file=out)
        elif args.action == "show":
            print(json.dumps(await client.get_run(args.run_id), indent=2), file=out)
        elif args.action == "stop":
            run = await client.stop(args.run_id)
            stopping = " (stopping)" if run["stopping"] else ""
            print(f"{run['run_id']}: {run['status']}{stopping}", file=out)
        else:
            render = _json_line if args.json else _Renderer(out)
            async for event in client.events(args.run_id, after=args.after):
                render(event, out)
    return 0


def _chat(url: str, token: str | None, args: argparse.Namespace, out: TextIO) -> int:
    run_id: list[str] = []

    async def chat() -> None:
        async with Client(url, token=token) as client:
            render: Callable[[Event, TextIO], None] = _json_line if args.json else _Renderer(out)
            events: AsyncIterator[Event] = client.stream_run(args.text, thread_id=args.thread)
            async for event in events:
                if isinstance(event, RunStarted):
                    run_id.append(event.run_id)
                render(event, out)

    try:
        anyio.run(chat)
    except KeyboardInterrupt:
        if not run_id:
            return 130

        async def stop() -> None:
            async with Client(url, token=token) as client:
                run = await client.stop(run_id[0])
                print(f"\n[stopped on the server: {run['status']}]", file=out)

        anyio.run(stop)
        return 130
    return 0


def _json_line(event: Event, out: TextIO) -> None:
    print(event.model_dump_json(), file=out, flush=True)


class _Renderer:
    """Assistant text as it grows; tools and the end on lines of their own."""

    def __init__(self, out: TextIO) -> None:
        self.midline = False
        self.out = out

    def _line(self, text: str) -> None:
        if self.midline:
            print(file=self.out)
            self.midline = False
        print(text, file=self.out, flush=True)

    def __call__(self, event: Event, out: TextIO) -> None:
        if isinstance(event, MessageChunk):
            print(event.content, end="", file=out, flush=True)
            self.midline = True
        elif isinstance(event, ToolStart):
            self._line(f"[tool {event.name}({json.dumps(event.args, ensure_ascii=False)}) …]")
        elif isinstance(event, ToolEnd):
            self._line(f"[tool {event.name} → {event.output}]")
        elif isinstance(event, Custom):
            self._line(f"[{event.name}: {json.dumps(event.data, ensure_ascii=False)}]")
        elif isinstance(event, Interrupt):
            asked = json.dumps(event.value, ensure_ascii=False)
            self._line(f'[interrupt: {asked}; answer with config {{"resume": …}}]')
        elif isinstance(event, ErrorEvent):
            self._line(f"[error {event.code}: {event.message}]")
        elif isinstance(event, Done):
            self._line(f"[{event.status}: {event.reason}]")
