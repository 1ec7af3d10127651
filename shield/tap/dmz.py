"""``twistd shield-dmz --config dmz.toml``."""

from __future__ import annotations

from twisted.application.service import IService

from shield import reactor as shield_reactor

shield_reactor.install()  # before anything imports twisted.internet.reactor

from shield.transports import the_reactor  # noqa: E402

from shield.config.loader import load_dmz_config
from shield.tap.common import GatewayOptions, build_or_exit


class Options(GatewayOptions):
    synopsis = "--config dmz.toml"
    longdesc = "Run a shield DMZ gateway: public frontplane, connector backplane, admin endpoint."
    loader = staticmethod(load_dmz_config)


def makeService(options: Options) -> IService:
    from shield.dmz.gateway import DmzGateway

    return build_or_exit(options["config"], lambda: DmzGateway(options["loaded"], the_reactor()))
