"""``streamctl.decoder.SSEDecoder`` against the parsing rules 1-7 of SSE-NOTES.md, fed whole, one
byte at a time (with empty chunks between), and split at every point.

The cases (``tests/support/decoder_cases.py``) are also what ``test_static.py`` feeds the
browser's ``SSEParser`` under Node.
"""

from __future__ import annotations

import pytest

from streamctl.decoder import SSEDecoder

from .support.decoder_cases import CASES, feedings


def decode(chunks: list[bytes]) -> tuple[list[tuple[str, str, str]], str, int | None]:
    decoder = SSEDecoder()
    events = [(e.event, e.data, e.id) for chunk in chunks for e in decoder.feed(chunk)]
    return events, decoder.last_event_id, decoder.retry


@pytest.mark.parametrize("name", CASES)
def test_decoder_follows_the_rules_however_the_bytes_arrive(name: str) -> None:
    case = CASES[name]
    for chunks in feedings(case.stream):
        assert decode(chunks) == (case.events, case.last_event_id, case.retry), chunks
