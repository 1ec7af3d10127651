"""``twistd shield-internal --config internal.toml``."""

from __future__ import annotations

from twisted.application.service import IService

from shield import reactor as shield_reactor

shield_reactor.install()  # before anything imports twisted.internet.reactor

from twisted.internet import reactor  # noqa: E402

from shield.config.loader import load_internal_config
from shield.tap.common import GatewayOptions, build_or_exit


class Options(GatewayOptions):
    synopsis = "--config internal.toml"
    longdesc = "Run a shield internal gateway (connector): dials the DMZ, serves its own backends."
    loader = staticmethod(load_internal_config)


def makeService(options: Options) -> IService:
    from shield.internal.gateway import InternalGateway

    return build_or_exit(options["config"], lambda: InternalGateway(options["loaded"], reactor))
