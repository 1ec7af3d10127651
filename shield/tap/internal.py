"""``twistd shield-internal --config internal.toml``, or ``twistd shield-internal`` configured by
the ``SHIELD_*`` environment variables (a container sidecar; see shield/config/env.py)."""

from __future__ import annotations

from twisted.application.service import IService

from shield import reactor as shield_reactor

shield_reactor.install()  # before anything imports twisted.internet.reactor

from shield.transports import the_reactor  # noqa: E402

from shield.config.env import configured_by_environment, internal_config_from_environment
from shield.config.errors import ConfigError
from shield.config.loader import load_internal_config
from shield.tap.common import GatewayOptions, build_or_exit, config_failure


class Options(GatewayOptions):
    synopsis = "[--config internal.toml]"
    longdesc = (
        "Run a shield internal gateway (connector): dials the DMZ, serves its own backends. "
        "Without --config it is configured by the SHIELD_* environment variables (docs/containers.md)."
    )
    loader = staticmethod(load_internal_config)
    from_environment = True

    def postOptions(self) -> None:
        self.name_pid_file()
        if self["config"] or not configured_by_environment():
            super().postOptions()
            return
        try:
            self["loaded"] = internal_config_from_environment()
        except ConfigError as error:
            config_failure("environment", error)
        self["config"] = "environment"


def makeService(options: Options) -> IService:
    from shield.internal.gateway import InternalGateway

    return build_or_exit(options["config"], lambda: InternalGateway(options["loaded"], the_reactor()))
