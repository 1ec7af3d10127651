"""What both gateways do around their own work, written once: start under twistd (SIGHUP reloads,
the open-files limit raised, a failure to start is a fatal exit) and a reload that is refused
whole, with one line, when the new configuration does not pass."""

from __future__ import annotations

import signal
from typing import Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from shield.config.errors import ConfigError
from shield.ops.drain import fatal, raise_file_limit
from shield.reactor import describe as describe_reactor
from shield.transports import IGatewayReactor

T = TypeVar("T")


def start_gateway(
    what: str, reactor: IGatewayReactor, log: Logger, reload: Callable[[], None], start: Callable[[], Deferred[None]]
) -> Deferred[None]:
    """SIGHUP calls ``reload`` (in the reactor thread); ``start`` runs; if it fails, the process
    says why and exits 1 (``shield.ops.drain.fatal``)."""
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
    limit = raise_file_limit(log)
    log.info("open-files limit: {limit}; reactor: {reactor}", limit=limit, reactor=describe_reactor(reactor))
    started = start()
    started.addErrback(fatal, reactor, f"{what} could not start")
    return started


def checked_reload(source: str, log: Logger, load: Callable[[], T]) -> T | None:
    """Run a reload's load-and-check; None (and one 'reload refused' line naming why) when the
    new configuration cannot be used: the running one stays."""
    try:
        return load()
    except ConfigError as error:
        log.error("reload refused, the running configuration stays: {problem}",
                  problem=error.describe() if error.file else f"{source}: {error}")  # fmt: skip
    except Exception as error:  # a certificate that does not load, say
        log.error("reload refused, the running configuration stays: {source}: {problem}", source=source, problem=str(error))
    return None
