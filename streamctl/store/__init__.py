"""Storage: the protocol the domain speaks (``base``), its SQLite implementation (``sqlite``) and
the SQLite schema's migrations (``migrate``), and the Redis implementation (``redis``, with the
extra ``streamctl[redis]``). Every query streamctl makes lives in this package."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from ..settings import Settings

Store = SqliteStore
"""The default store (SQLite); ``RunStore`` is the protocol every store implements."""


def open_store(settings: Settings) -> RunStore:
    """The store ``settings`` choose (not yet entered: use it as ``async with``)."""
    if settings.backend == "redis":
        try:
            from .redis import RedisStore
        except ImportError as exc:  # the extra is not installed
            from ..errors import StoreError

            raise StoreError(
                f"backend=redis needs the redis client: pip install 'streamctl[redis]' ({exc})"
            ) from exc
        return RedisStore(settings.redis_url, lease_seconds=settings.redis_lease_seconds)
    return SqliteStore(settings.db)


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
    "open_store",
]
