"""The built wheel is complete: an installed (non-editable) streamctl finds its migrations."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_migrations_and_runs_from_them(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("streamctl-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "streamctl/migrations/0001_initial.sql" in names
        assert "streamctl/py.typed" in names
        assert {"streamctl/static/index.html", "streamctl/static/streamctl.js"} <= names
        archive.extractall(site)
    # Run the unpacked wheel, far from the checkout: it must find its schema inside itself.
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import sys, streamctl, streamctl.cli; print(streamctl.__file__);"
        " sys.exit(streamctl.cli.main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "migrate", "--db", str(tmp_path / "w.db")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(site)), result.stdout
    assert "applied 0001_initial.sql" in result.stdout


def test_importing_streamctl_imports_no_adapter_dependency() -> None:
    # The adapters' libraries are optional extras: the core install must work without them.
    code = (
        "import sys, streamctl, streamctl.agents, streamctl.http, streamctl.cli\n"
        "streamctl.agents.load_agent('demo')\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "heavy = {'openai', 'langgraph', 'langchain_core', 'tenxgraph', 'agentflow'} & loaded\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
