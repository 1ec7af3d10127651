"""The one error a bad configuration file produces: where it is wrong, and what is wrong there."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """A configuration problem, located by its TOML key path so the user can find it.

    ``key_path`` looks like ``dmz.service[0].accept[1]``; it is empty for problems of the whole
    file (unreadable file, TOML syntax). ``file`` is the configuration file when known: the
    loader fills it in, lower-level parsers such as ``parse_uri`` leave it ``None``.
    """

    def __init__(self, key_path: str, problem: str, file: Path | None = None) -> None:
        super().__init__(key_path, problem, file)
        self.key_path = key_path
        self.problem = problem
        self.file = file

    def __str__(self) -> str:
        return f"{self.key_path}: {self.problem}" if self.key_path else self.problem

    def describe(self) -> str:
        """The line a command prints: ``FILE: key.path: problem`` (no ``FILE:`` when unknown)."""
        return f"{self.file}: {self}" if self.file is not None else str(self)
