"""The docs describe the code that exists: every setting, every route, every event, every error."""

from __future__ import annotations

from pathlib import Path

from streamctl import Settings, create_app
from streamctl.errors import StreamctlError
from streamctl.events import event_json_schema

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented_with_its_variable_and_default() -> None:
    text = (DOCS / "settings.md").read_text()
    for name, field in Settings.model_fields.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"setting {name} is not in docs/settings.md"
        assert f"`STREAMCTL_{name.upper()}`" in row
        assert f"`{field.default}`" in row, f"default of {name} differs in docs/settings.md"


def test_every_route_is_documented(tmp_path: Path) -> None:
    text = (DOCS / "api.md").read_text()
    app = create_app(Settings.from_env({}, db=tmp_path / "x.db"))
    # From the schema: FastAPI keeps included routers as such in `app.routes` (no APIRoute).
    paths = app.openapi()["paths"]
    assert len(paths) > 10
    for path, operations in paths.items():
        for method in operations:
            route = f"{method.upper()} {path}"
            assert f"`{route}`" in text, f"{route} not documented"


def test_every_event_and_error_code_is_documented() -> None:
    events = (DOCS / "events.md").read_text()
    for name in event_json_schema()["discriminator"]["mapping"]:
        assert f"| `{name}` |" in events, f"event {name} is not in docs/events.md"
    api = (DOCS / "api.md").read_text()
    codes = {cls.code for cls in _subclasses(StreamctlError)} - {"streamctl_error"}
    codes -= {"agent_not_found", "invalid_settings"}  # start-up errors of the CLI, not HTTP
    for code in codes:
        assert f"`{code}`" in api, f"error code {code} is not in docs/api.md"


def _subclasses(cls: type[StreamctlError]) -> set[type[StreamctlError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found
