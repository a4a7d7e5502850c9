"""Error lines carry no terminal escapes: the one line of a failed segment, and what the CLI
prints. Keras colours its messages; raw in a row or on a terminal, an escape recolours or
rewrites the user's display."""

from __future__ import annotations

import pytest

from phobbit.cli import commands
from phobbit.execution.worker import one_line, printable

KERAS = (
    "Exception encountered when calling Sequential.call().\n\n\x1b[1mInput 0 of layer "
    '"dense" is incompatible with the layer: expected axis -1 of input shape to have value '
    "784, but received input with shape (None, 20)\x1b[0m\n\nArguments received"
)
HOSTILE = [
    ("\x1b[31mred\x1b[0m", "red"),  # CSI: colour
    ("a\x1b[2J\x1b[Hb", "ab"),  # CSI: clear the screen, move the cursor
    ("\x1b]0;owned\x07title", "title"),  # OSC: the window title, ended by BEL
    ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC 8: a hyperlink, ended by ST
    ("\x9b1mC1\x9bm", "C1"),  # 8-bit CSI
    ("bell\x07 nul\x00 bs\x08 del\x7f", "bell nul bs del"),  # other control characters
    ("reset\x1bc charset\x1b(B end\x1b", "reset charset end"),  # other escapes, a lone ESC
]


def test_the_line_of_a_failed_segment_has_no_escapes() -> None:
    line = one_line(ValueError(KERAS))
    assert line == (
        "ValueError: Exception encountered when calling Sequential.call(). "
        'Input 0 of layer "dense" is incompatible with the layer: '
        "expected axis -1 of input shape to have value 784, but "
        "received input with shape (None, 20) Arguments received"
    )


@pytest.mark.parametrize(("text", "clean"), HOSTILE)
def test_printable_drops_escape_sequences_and_control_characters(text: str, clean: str) -> None:
    assert printable(text) == clean
    assert one_line(RuntimeError(text)) == f"RuntimeError: {clean}"


def test_printable_keeps_text_and_whitespace() -> None:
    text = "naïve [red] café\t€ 日本\nnext"
    assert printable(text) == text


def test_the_cli_prints_an_error_without_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    """An error quoting an old row written raw (before errors were cleaned) prints clean."""
    commands._error(f"every trial failed; the first says: {KERAS}")
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1
    assert err.startswith("phobbit: error: every trial failed; the first says: Exception")
