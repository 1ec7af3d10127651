"""The ``shield`` command: check a config, make dev certificates, hash a token, run the demo, be a test
client, and answer a container engine's health check."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shield.config.errors import ConfigError

EXIT_BAD_CONFIG = 2


def check_config(path: str) -> int:
    """Validate a DMZ or internal config exactly as twistd would; exit 2 when it is unusable."""
    from shield.config.loader import load_config
    from shield.config.model import DmzConfig

    try:
        config = load_config(Path(path))
        build_gateway(config)
    except ConfigError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    kind = "DMZ gateway" if isinstance(config, DmzConfig) else "internal gateway"
    services = ", ".join(service.name for service in config.services)
    print(f"{path}: ok ({kind} {config.name!r}; services: {services})")
    return 0


def build_gateway(config: object) -> object:
    """The gateway service twistd would run (not started): loads every certificate and key."""
    from shield.transports import the_reactor

    from shield.config.model import DmzConfig, InternalConfig

    if isinstance(config, DmzConfig):
        from shield.dmz.gateway import DmzGateway

        return DmzGateway(config, the_reactor())
    from shield.internal.gateway import InternalGateway

    assert isinstance(config, InternalConfig), type(config)
    return InternalGateway(config, the_reactor())


def certs_dev(out: str, dmz_names: list[str], connectors: list[str], dmz_alt_names: list[str] | None = None) -> int:
    from shield.tls.devcerts import generate_dev_certs

    try:
        written = generate_dev_certs(Path(out), dmz_names, connectors, dmz_alt_names=dmz_alt_names or ())
    except ValueError as error:
        print(f"shield certs-dev: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for path in written:
        print(path)
    return 0


def hash_token() -> int:
    """Read a token from standard input (never the command line: shells and ps keep those) and
    print the ``sha256:...`` line a service's ``tokens`` key takes."""
    import hashlib

    token = sys.stdin.readline().rstrip("\r\n")
    if not token:
        print("shield hash-token: no token on standard input", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print("sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest())
    return 0


#: Where ``shield healthcheck`` looks without a URL: the connector image's admin address.
DEFAULT_HEALTHCHECK = "http://127.0.0.1:9101"


def healthcheck_url(url: str | None, environ: dict[str, str] | None = None) -> str:
    """The readiness URL to ask: the argument, else ``SHIELD_HEALTHCHECK_URL``, else the admin
    address the sidecar listens on (``SHIELD_ADMIN``; a wildcard host is asked on 127.0.0.1).
    A URL without a path means its ``/readyz``."""
    from urllib.parse import urlsplit, urlunsplit

    environ = dict(os.environ) if environ is None else environ
    chosen = url or environ.get("SHIELD_HEALTHCHECK_URL") or environ.get("SHIELD_ADMIN") or DEFAULT_HEALTHCHECK
    parts = urlsplit(chosen)
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    path = parts.path if parts.path not in ("", "/") else "/readyz"
    return urlunsplit((parts.scheme or "http", netloc, path, parts.query, ""))


def healthcheck(url: str | None, timeout: float) -> int:
    """Exit 0 when the gateway's ``/readyz`` answers 200, 1 otherwise, with one line saying why."""
    import urllib.error
    import urllib.request

    target = healthcheck_url(url)
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            status, body = response.status, response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read(4096).decode("utf-8", "replace")
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        print(f"not ready: {target}: cannot ask it: {reason}")
        return 1
    if status == 200:
        print(f"ready: {target}")
        return 0
    why = "; ".join(line.strip() for line in body.splitlines()[1:] if line.strip()) or body.strip()
    print(f"not ready: {target} answered {status}: {why[:500]}")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shield", description="shield reverse tunnel tools")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="validate a dmz.toml or internal.toml")
    check.add_argument("file")

    certs = commands.add_parser("certs-dev", help="make a development CA and gateway certificates")
    certs.add_argument("--out", required=True, help="folder for the PEM files")
    # extend: "--connector a --connector b" makes both (a repeated flag must not drop the first)
    certs.add_argument("--dmz-name", nargs="+", action="extend", required=True, dest="dmz_names", metavar="NAME")
    certs.add_argument("--connector", nargs="+", action="extend", required=True, dest="connectors", metavar="ID")
    certs.add_argument(
        "--dmz-alt-name", nargs="+", action="extend", default=[], dest="dmz_alt_names", metavar="NAME",
        help="more DNS names on every DMZ certificate, e.g. the name connectors verify (server-name) "
        "when each member has a certificate of its own",
    )

    demo = commands.add_parser("demo", help="run a DMZ gateway, a connector and an echo backend on 127.0.0.1")
    demo.add_argument("--dir", default="demo-run", help="folder for generated configs and certificates")

    client = commands.add_parser("client", help="connect stdin/stdout to a ws://, wss://, tcp:// or tls:// URL")
    client.add_argument("url")

    commands.add_parser("hash-token", help="print the sha256: form of a token read from standard input")

    echo = commands.add_parser("echo-backend", help="a TCP echo server, as a backend to try a tunnel with")
    echo.add_argument("--listen", default="tcp://127.0.0.1:7000", help="tcp://host:port (default tcp://127.0.0.1:7000)")

    health = commands.add_parser(
        "healthcheck", help="exit 0 when a gateway's admin /readyz answers 200, 1 otherwise (for container engines)"
    )
    health.add_argument("url", nargs="?", help=f"admin URL or its /readyz (default: $SHIELD_HEALTHCHECK_URL, $SHIELD_ADMIN, {DEFAULT_HEALTHCHECK})")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")

    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "certs-dev":
        return certs_dev(args.out, args.dmz_names, args.connectors, args.dmz_alt_names)
    if args.command == "demo":
        from shield.demo import run_demo

        return run_demo(Path(args.dir))
    if args.command == "hash-token":
        return hash_token()
    if args.command == "echo-backend":
        from shield.demo import run_echo_backend

        return run_echo_backend(args.listen)
    if args.command == "healthcheck":
        return healthcheck(args.url, args.timeout)
    if args.command == "client":
        from shield.client import run_client

        return run_client(args.url)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
