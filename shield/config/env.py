"""A connector configured by environment variables alone: the single-service container sidecar.

``twistd -n shield-internal`` without ``--config`` reads these (docs/containers.md):

    SHIELD_NAME          internal.name: the connector identity, as in its certificate
    SHIELD_DMZ           internal.backplane.connect: tls://host:port or wss://host:port/path,
                         comma-separated for several
    SHIELD_SERVER_NAME   internal.backplane.server-name: the name the DMZ certificate carries
    SHIELD_CERT          internal.backplane.cert: this connector's certificate and key (PEM)
    SHIELD_CA            internal.backplane.ca: the CA of the DMZ certificates (PEM)
    SHIELD_SERVICE       the service name
    SHIELD_BACKEND       its backend: tcp://host:port, tls://host:port or unix:/path
    SHIELD_PRIORITY      optional, internal.priority
    SHIELD_LINKS         optional, internal.backplane.links
    SHIELD_ADMIN         optional, internal.admin: http://host:port
    SHIELD_PROXY         optional, internal.backplane.proxy: http://host:port of a CONNECT proxy
    SHIELD_PROXY_AUTH_FILE  optional, internal.backplane.proxy-auth-file: a file of user:password

HTTPS_PROXY, HTTP_PROXY and NO_PROXY are not read: a container platform sets them for the programs
of a pod, and they must not silently reroute the backplane (docs/configuration.md).

The variables become the same document a configuration file would give, and go through the same
loader and the same checks; a problem is reported with the variable's name instead of a key path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shield.config.errors import ConfigError
from shield.config.model import InternalConfig

#: Variable -> the key path it fills, in the order they are checked and documented.
REQUIRED = {
    "SHIELD_NAME": "internal.name",
    "SHIELD_DMZ": "internal.backplane.connect",
    "SHIELD_SERVER_NAME": "internal.backplane.server-name",
    "SHIELD_CERT": "internal.backplane.cert",
    "SHIELD_CA": "internal.backplane.ca",
    "SHIELD_SERVICE": "internal.service[0].name",
    "SHIELD_BACKEND": "internal.service[0].connect",
}
OPTIONAL = {
    "SHIELD_PRIORITY": "internal.priority",
    "SHIELD_LINKS": "internal.backplane.links",
    "SHIELD_ADMIN": "internal.admin",
    "SHIELD_PROXY": "internal.backplane.proxy",
    "SHIELD_PROXY_AUTH_FILE": "internal.backplane.proxy-auth-file",
}
INTEGERS = ("SHIELD_PRIORITY", "SHIELD_LINKS")


def configured_by_environment(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether any SHIELD_* variable of the sidecar is set (then all required ones must be)."""
    return any(name in environ for name in (*REQUIRED, *OPTIONAL))


def internal_config_from_environment(environ: Mapping[str, str] = os.environ) -> InternalConfig:
    """The connector's configuration from the variables; ``ConfigError`` names the variable."""
    from shield.config import loader

    missing = [name for name in REQUIRED if not environ.get(name, "").strip()]
    if missing:
        more = f" (so are {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(missing[0], f"is required to configure the connector from the environment{more}")
    values = {name: environ[name].strip() for name in (*REQUIRED, *OPTIONAL) if environ.get(name, "").strip()}
    internal: dict[str, Any] = {
        "name": values["SHIELD_NAME"],
        "backplane": {
            "connect": [part.strip() for part in values["SHIELD_DMZ"].split(",") if part.strip()],
            "server-name": values["SHIELD_SERVER_NAME"],
            "cert": values["SHIELD_CERT"],
            "ca": values["SHIELD_CA"],
        },
        "service": [{"name": values["SHIELD_SERVICE"], "connect": values["SHIELD_BACKEND"]}],
    }
    for name in INTEGERS:
        if name in values:
            try:
                number = int(values[name])
            except ValueError:
                raise ConfigError(name, f"expected an integer, got {values[name]!r}") from None
            if name == "SHIELD_PRIORITY":
                internal["priority"] = number
            else:
                internal["backplane"]["links"] = number
    if "SHIELD_ADMIN" in values:
        internal["admin"] = values["SHIELD_ADMIN"]
    for name, key in (("SHIELD_PROXY", "proxy"), ("SHIELD_PROXY_AUTH_FILE", "proxy-auth-file")):
        if name in values:
            internal["backplane"][key] = values[name]
    try:
        return loader.build_internal({"internal": internal}, Path.cwd())
    except ConfigError as error:
        raise ConfigError(_variable_for(error.key_path), error.problem) from None


def _variable_for(key_path: str) -> str:
    for name, path in (*REQUIRED.items(), *OPTIONAL.items()):
        if key_path == path or key_path.startswith(path + "[") or key_path.startswith(path + "."):
            return name
    return key_path or "environment"
