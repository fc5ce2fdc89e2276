"""The exceptions users see: bad input is a :class:`ConfigError`, never a traceback."""
from __future__ import annotations


class PruneconfError(Exception):
    """Base of every error pruneconf raises on purpose."""


class ConfigError(PruneconfError, ValueError):
    """A recipe or command-line value is wrong; says where (file, line, key) and what is expected."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: int | None = None, key: str | None = None) -> None:
        self.path, self.line, self.column, self.key = path, line, column, key
        where = path or ""
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        prefix = f"{where}: " if where else ""
        if key:
            prefix += f"'{key}': "
        super().__init__(prefix + message)
        self.message = message


class TraceError(PruneconfError, RuntimeError):
    """The model could not be run on the example inputs; the model is left as it was."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line errors
    about code pruneconf does not own (a user's builder, an exporter)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"
