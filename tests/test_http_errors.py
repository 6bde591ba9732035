"""Domain errors map to HTTP statuses by class, in ``streamctl/http/errors.py`` alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import streamctl.http.errors as http_errors
from streamctl import errors
from streamctl.http.errors import status_of

# Raised at start-up or by the client, never answered by the server.
NOT_ANSWERED = {errors.AgentNotFound, errors.SettingsError, errors.ClientError}


def _tree(cls: type[errors.StreamctlError]) -> set[type[errors.StreamctlError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _tree(sub)
    return found


def _name(cls: type[errors.StreamctlError]) -> str:
    return cls.__name__


TREE = sorted(_tree(errors.StreamctlError), key=_name)


@pytest.mark.parametrize("cls", TREE, ids=_name)
def test_every_error_the_server_answers_has_a_client_or_service_status(
    cls: type[errors.StreamctlError],
) -> None:
    assert cls.__module__ == "streamctl.errors", f"{cls.__name__} lives outside the error tree"
    exc = cls.__new__(cls)  # the status depends on the class only
    if cls in NOT_ANSWERED or issubclass(cls, errors.RunFailure):
        assert status_of(exc) == 500
    else:
        assert status_of(exc) in {400, 401, 404, 409, 410, 422, 429, 503}, cls


def test_a_subclass_answers_like_its_parent() -> None:
    assert status_of(errors.TooManyStreams("x")) == 429


def test_the_mapping_imports_no_agent() -> None:
    source = Path(http_errors.__file__).read_text()
    imported = {
        node.module or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
    }
    assert not any("agents" in module for module in imported), imported
