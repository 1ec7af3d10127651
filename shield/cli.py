"""The ``shield`` command: check a config, make dev certificates, hash a token, run the demo, be a test client."""

from __future__ import annotations

import argparse
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
    from twisted.internet import reactor

    from shield.config.model import DmzConfig

    if isinstance(config, DmzConfig):
        from shield.dmz.gateway import DmzGateway

        return DmzGateway(config, reactor)
    from shield.internal.gateway import InternalGateway

    return InternalGateway(config, reactor)  # type: ignore[arg-type]


def certs_dev(out: str, dmz_names: list[str], connectors: list[str]) -> int:
    from shield.tls.devcerts import generate_dev_certs

    try:
        written = generate_dev_certs(Path(out), dmz_names, connectors)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shield", description="shield reverse tunnel tools")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="validate a dmz.toml or internal.toml")
    check.add_argument("file")

    certs = commands.add_parser("certs-dev", help="make a development CA and gateway certificates")
    certs.add_argument("--out", required=True, help="folder for the PEM files")
    certs.add_argument("--dmz-name", nargs="+", required=True, dest="dmz_names", metavar="NAME")
    certs.add_argument("--connector", nargs="+", required=True, dest="connectors", metavar="ID")

    demo = commands.add_parser("demo", help="run a DMZ gateway, a connector and an echo backend on 127.0.0.1")
    demo.add_argument("--dir", default="demo-run", help="folder for generated configs and certificates")

    client = commands.add_parser("client", help="connect stdin/stdout to a ws://, wss://, tcp:// or tls:// URL")
    client.add_argument("url")

    commands.add_parser("hash-token", help="print the sha256: form of a token read from standard input")

    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "certs-dev":
        return certs_dev(args.out, args.dmz_names, args.connectors)
    if args.command == "demo":
        from shield.demo import run_demo

        return run_demo(Path(args.dir))
    if args.command == "hash-token":
        return hash_token()
    if args.command == "client":
        from shield.client import run_client

        return run_client(args.url)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
