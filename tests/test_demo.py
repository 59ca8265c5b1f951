"""`make demo` after its render: a terminal keeps the farm up until Enter, anything
else ends at once. Real terminals (a pseudo-terminal) and real pipes, no Blender."""

from __future__ import annotations

import importlib.util
import io
import os
import pty
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"
URL = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def demo() -> Any:
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def holding(demo: Any, stdin: Any) -> tuple[threading.Thread, io.StringIO]:
    out = io.StringIO()
    thread = threading.Thread(target=demo.hold_for_dashboard, args=(URL, stdin, out),
                              daemon=True)
    thread.start()
    return thread, out


@pytest.fixture
def terminal() -> Iterator[tuple[int, Any]]:
    """A pseudo-terminal: its controlling side, and its terminal side as a text stdin."""
    master, slave = pty.openpty()
    stdin = os.fdopen(slave, "r")
    try:
        yield master, stdin
    finally:
        stdin.close()
        os.close(master)


def test_in_a_terminal_the_farm_stays_up_until_enter(demo: Any,
                                                     terminal: tuple[int, Any]) -> None:
    master, stdin = terminal
    thread, out = holding(demo, stdin)
    thread.join(0.3)
    assert thread.is_alive(), "it stopped the farm before Enter"
    assert out.getvalue().strip() == f"Dashboard: {URL} \N{EM DASH} press Enter to stop"
    os.write(master, b"\n")
    thread.join(5)
    assert not thread.is_alive(), "Enter did not stop it"


def test_without_a_terminal_it_stops_at_once(demo: Any) -> None:
    # A pipe nobody writes to: reading it would hang, as CI would with `make demo`.
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "r") as stdin:
        thread, out = holding(demo, stdin)
        thread.join(2)
        alive = thread.is_alive()
        os.close(write_end)  # lets a thread that does read finish
        thread.join(5)
    assert not alive, "it waited for Enter with no terminal"
    assert out.getvalue() == ""


def test_a_closed_stdin_stops_at_once(demo: Any) -> None:
    stdin = io.StringIO()
    stdin.close()
    thread, out = holding(demo, stdin)
    thread.join(2)
    assert not thread.is_alive() and out.getvalue() == ""
