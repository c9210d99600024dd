"""User-facing errors of the data layer, importable without the training stack (no pyarrow)."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A transaction file cannot be used; the message names the file, line and column."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, column: str | None = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.column = column
