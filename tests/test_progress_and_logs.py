"""Progress bars follow one rule (off unless stderr is a terminal), and logged durations are right."""

from __future__ import annotations

import io
import logging
import re

import sae_circuits as sc
import sae_circuits.attribution._attribute as attribution_module
from sae_circuits.core.progress import show_progress

from .conftest import PROMPT, build


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_default_rule_follows_stderr(monkeypatch):
    model, tcs = build("gpt2")
    ts = sc.load_transcoders(tcs)
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    assert show_progress(None) is False
    sc.attribute(model, PROMPT, ts)  # progress=None: stderr is no terminal
    assert piped.getvalue() == ""
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert show_progress(None) is True
    sc.attribute(model, PROMPT, ts)
    assert "attribution" in terminal.getvalue()
    assert show_progress(False) is False and show_progress(True) is True


def test_logged_duration_is_the_elapsed_time(monkeypatch, caplog):
    """The clock is faked at 1e6 s and advances 0.25 s a reading: the log must say ~0.25 s per
    reading between start and end, not a difference against a node index."""
    model, tcs = build("gpt2")
    ts = sc.load_transcoders(tcs)
    ticks = {"t": 1e6}

    def clock() -> float:
        ticks["t"] += 0.25
        return ticks["t"]

    monkeypatch.setattr(attribution_module.time, "perf_counter", clock)
    with caplog.at_level(logging.INFO, logger="sae_circuits.attribution"):
        sc.attribute(model, PROMPT, ts)
    done = [r.getMessage() for r in caplog.records if "attribution done" in r.getMessage()]
    assert len(done) == 1, done
    seconds = float(re.search(r"done in ([0-9.eE+-]+)s", done[0]).group(1))  # type: ignore[union-attr]
    readings = ticks["t"] - 1e6
    assert 0 < seconds <= readings, (seconds, readings)
