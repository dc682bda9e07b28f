"""A status line on stderr for long work: redrawn in place (\\r) when stderr
is a terminal, one line per update otherwise. Safe to update from several
threads."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

_CLEAR = "\r\x1b[K"


class Progress:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._enabled = enabled
        self._lock = threading.Lock()
        self._text = ""  # what the line says now
        self._shown = False  # the line is on screen (terminal only)
        self._held = False  # another writer owns the terminal line for now

    def update(self, text: str) -> None:
        if not self._enabled:
            return
        with self._lock:
            if text == self._text:
                return
            self._text = text
            if not self._tty:
                self._stream.write(text + "\n")
            elif not self._held:
                self._stream.write(_CLEAR + text)
                self._shown = True
            self._stream.flush()

    def hold(self) -> None:
        """Takes the line off a terminal and keeps it off until `release`,
        so that text written meanwhile (a streaming answer) is not torn."""
        with self._lock:
            self._held = True
            if self._shown:
                self._stream.write(_CLEAR)
                self._stream.flush()
                self._shown = False

    def release(self) -> None:
        with self._lock:
            self._held = False
            if self._tty and self._enabled and self._text:
                self._stream.write(_CLEAR + self._text)
                self._stream.flush()
                self._shown = True

    def finish(self) -> None:
        """Leaves the last state on screen and moves below it."""
        with self._lock:
            if self._shown:
                self._stream.write("\n")
                self._stream.flush()
                self._shown = False
