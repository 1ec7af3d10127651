"""What both twistd plugins share: ``--config``, validation before anything listens, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TypeVar

from twisted.python import usage

from shield.config.errors import ConfigError

T = TypeVar("T")

#: Exit status for a configuration that cannot be used (nothing has been started).
EXIT_BAD_CONFIG = 2


def config_failure(path: str, error: Exception) -> None:
    """Print ``FILE: key.path: problem`` and exit 2."""
    sys.stderr.write(f"{path}: {error}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_BAD_CONFIG)


class GatewayOptions(usage.Options):
    optParameters = [["config", "c", None, "the gateway's TOML configuration file"]]
    loader: Callable[[Path], object]
    #: Whether the gateway can also be configured by environment variables (the connector).
    from_environment = False

    def name_pid_file(self) -> None:
        """twistd writes ``twistd.pid`` in the working folder by default, so a DMZ gateway and a
        connector started from one folder collided ("Another twistd server is running"). Unless
        ``--pidfile`` is given, each gateway's file is named after it: ``shield-dmz.pid``,
        ``shield-internal.pid``. (``--pidfile=`` writes none, as in the container image.)"""
        parent = getattr(self, "parent", None)
        if parent is not None and parent.get("pidfile") == "twistd.pid" and getattr(parent, "subCommand", None):
            parent["pidfile"] = f"{parent.subCommand}.pid"

    def postOptions(self) -> None:
        self.name_pid_file()
        path = self["config"]
        if not path:
            raise usage.UsageError(
                "--config FILE is required" + (" (or the SHIELD_* environment variables)" if self.from_environment else "")
            )
        try:
            self["loaded"] = type(self).loader(Path(path))
        except ConfigError as error:
            config_failure(path, error)


def tls_material(key_paths: dict[str, Path], build: Callable[[], T]) -> T:
    """Build TLS contexts; a bad certificate, key or CA becomes a ConfigError at its key path.

    ``key_paths`` maps config key paths to the files they name, so the error says which key
    points at the unusable file.
    """
    from shield.tls.contexts import TLSConfigError

    try:
        return build()
    except TLSConfigError as error:
        message = str(error)
        for key_path, file in key_paths.items():
            if str(file) in message:
                raise ConfigError(key_path, message) from error
        raise ConfigError(next(iter(key_paths), ""), message) from error


def build_or_exit(path: str, build: Callable[[], T]) -> T:
    """Build the service; certificate and key problems found here also exit 2."""
    try:
        return build()
    except ConfigError as error:
        config_failure(path, error)
    except (OSError, ValueError) as error:
        config_failure(path, ConfigError("", f"cannot load TLS material: {error}"))
    raise AssertionError("unreachable")
