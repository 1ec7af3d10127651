"""The DMZ's certificates and keys, and which peers they admit.

Every file the configuration names is loaded and checked when the gateway is built (an unusable
one is exit 2 before anything listens) and again by a reload before it applies anything (the
reload is refused). The listeners hold reloadable contexts, so a reload's material serves new
handshakes while connections already made keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from shield.cluster.membership import may_be_member
from shield.config.model import DmzConfig
from shield.dmz.auth import client_certificate_verifier
from shield.tap.common import tls_material
from shield.tls.contexts import (
    MemberConnectionCreator,
    ReloadableClientTLS,
    ReloadableServerTLS,
    ServerTLSContext,
    backplane_server_context,
    cluster_client_options,
    cluster_server_context,
    public_server_context,
)


@dataclass(frozen=True)
class TLSMaterial:
    """Everything one configuration's TLS needs, loaded and checked."""

    backplane: ServerTLSContext
    public: dict[str, ServerTLSContext]  # by service name: the wss:// and tls:// accepts
    cluster: tuple[ServerTLSContext, MemberConnectionCreator] | None


class GatewayTLS:
    """The running TLS material of one DMZ gateway.

    ``is_connector`` says whether a certificate identity may link on the backplane (the
    configuration in force at each handshake decides); who may be a cluster member is decided
    here, from the configuration this part was last given.
    """

    def __init__(self, config: DmzConfig, is_connector: Callable[[str], bool]) -> None:
        self.config = config
        self.is_connector = is_connector
        material = self.load(config)  # raises ConfigError: exit 2 at start
        self.backplane = ReloadableServerTLS(material.backplane)
        self.public = material.public
        self.cluster = (
            (ReloadableServerTLS(material.cluster[0]), ReloadableClientTLS(material.cluster[1]))
            if material.cluster is not None
            else None
        )

    def load(self, config: DmzConfig) -> TLSMaterial:
        """Every certificate and key ``config`` names, loaded and checked (ConfigError naming the
        key whose file is unusable)."""
        backplane = config.backplane
        files = {"dmz.backplane.cert": backplane.cert, "dmz.backplane.ca": backplane.ca}
        server = tls_material(files, lambda: backplane_server_context(backplane.cert, backplane.ca, self.is_connector))
        public: dict[str, ServerTLSContext] = {}
        for index, service in enumerate(config.services):
            if service.cert is not None:
                names = {f"dmz.service[{index}].cert": service.cert}
                if service.client_ca is not None:
                    names[f"dmz.service[{index}].client-ca"] = service.client_ca
                public[service.name] = tls_material(names, partial(_public_context, service.cert, service.client_ca))
        cluster = None
        if config.cluster is not None:
            cluster = (
                tls_material(files, lambda: cluster_server_context(backplane.cert, backplane.ca, self.is_member)),
                tls_material(files, lambda: cluster_client_options(backplane.cert, backplane.ca, self.is_member)),
            )
        return TLSMaterial(server, public, cluster)

    def apply(self, config: DmzConfig, material: TLSMaterial) -> None:
        """A reload: new handshakes use ``material``; who may be a member follows ``config``."""
        self.config = config
        self.backplane.current = material.backplane
        self.public = material.public
        if self.cluster is not None and material.cluster is not None:
            self.cluster[0].current, self.cluster[1].current = material.cluster

    def is_member(self, identity: str) -> bool:
        """For the cluster's TLS: may a certificate with this identity be a member?"""
        cluster = self.config.cluster
        connectors = self.config.backplane.connectors
        return cluster is not None and may_be_member(identity, self.config.name, cluster, lambda: set(connectors))


def _public_context(cert: Path, client_ca: Path | None) -> ServerTLSContext:
    return public_server_context(cert, client_ca, client_certificate_verifier() if client_ca else None)
