"""Storage: the protocol the domain speaks (``base``), its SQLite implementation (``sqlite``) and
the SQLite schema's migrations (``migrate``). Every query streamctl makes lives in this package."""

from __future__ import annotations

from .base import (
    CommitSink,
    FinalState,
    NewRun,
    Orphan,
    RunRecord,
    RunStore,
    ThreadRecord,
)
from .migrate import migrate_file, migrations_dir
from .sqlite import SqliteStore

Store = SqliteStore
"""The default store (SQLite); ``RunStore`` is the protocol every store implements."""

__all__ = [
    "CommitSink",
    "FinalState",
    "NewRun",
    "Orphan",
    "RunRecord",
    "RunStore",
    "SqliteStore",
    "Store",
    "ThreadRecord",
    "migrate_file",
    "migrations_dir",
]
