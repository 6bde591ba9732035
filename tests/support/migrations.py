"""A database at an older schema, for the tests of the migrations after it."""

from __future__ import annotations

from pathlib import Path

import pytest

import streamctl.store.migrate
from streamctl.store import migrate_file, migrations_dir


async def migrate_below(db_path: Path, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Create ``db_path`` with the migrations numbered below ``version`` only."""
    old = db_path.parent / f"migrations-below-{version}"
    old.mkdir()
    for path in sorted(migrations_dir().glob("*.sql")):
        if int(path.name[:4]) < version:
            (old / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    with monkeypatch.context() as patch:
        patch.setattr(streamctl.store.migrate, "migrations_dir", lambda: old)
        await migrate_file(db_path)
