"""One exception type for bad input, so the CLI can print it without a traceback."""

from __future__ import annotations

from pathlib import Path


class ScencodeError(Exception):
    """Bad input or configuration; the message names the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
