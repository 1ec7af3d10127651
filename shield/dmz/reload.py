"""SIGHUP at the DMZ: read the configuration again, check it whole, and hand each part its piece.

The new file must pass every check a start would make (keys, files, certificates), and may not
change what only a restart can (name, backplane, cluster or admin addresses); otherwise it is
refused whole and the running configuration stays. Applied: certificates and keys for new
handshakes, services and connector lists added or removed, limits, timeouts, the grace period,
cluster members. Open links and clients are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.logger import Logger

from shield.config.errors import ConfigError
from shield.config.loader import load_dmz_config
from shield.config.model import ClientLimits, DmzCluster, DmzConfig, DmzService
from shield.dmz.certificates import TLSMaterial
from shield.ops.lifecycle import Phase, checked_reload

log = Logger(namespace="shield.dmz")


class TakesConfig(Protocol):
    """A part that reads the whole configuration (``BackplaneFactory``: at each announcement)."""

    config: DmzConfig


class TakesTLS(Protocol):
    """The certificates (``shield.dmz.certificates.GatewayTLS``): checked first, applied last."""

    def load(self, config: DmzConfig) -> TLSMaterial: ...

    def apply(self, config: DmzConfig, material: TLSMaterial) -> None: ...


class TakesLimits(Protocol):
    """The gateway-wide client count (``shield.dmz.admission.ClientGate``)."""

    gateway: ClientLimits


class TakesBudget(Protocol):
    """The gateway's buffer budget (``shield.mux.budget.BufferBudget``)."""

    limit: int


class TakesServices(Protocol):
    """The service registry (``shield.dmz.registry.ServiceRegistry``)."""

    def apply(self, config: DmzConfig) -> None: ...


class TakesBalancers(Protocol):
    """The balancer registry (``shield.dmz.registry.BalancerRegistry``)."""

    def apply(self, services: tuple[DmzService, ...]) -> None: ...


class TakesConnectors(Protocol):
    """The link metrics (``shield.dmz.link_metrics.LinkMetrics``)."""

    def reconfigure(self, connectors: list[str], services: list[str]) -> None: ...


class TakesCluster(Protocol):
    """The cluster member (``shield.dmz.cluster_member.ClusterMember``)."""

    def reconfigure(self, cluster: DmzCluster) -> None: ...


class TakesGrace(Protocol):
    """The drain (``shield.dmz.drain.DmzDrain``)."""

    grace_period: float


class Replans(Protocol):
    """The public ports (``shield.dmz.listeners.PublicPorts``): they plan from the registries."""

    def replan(self) -> None: ...


@dataclass(frozen=True)
class ReloadParts:
    """Who gets which piece of a new configuration."""

    backplane: TakesConfig
    tls: TakesTLS
    gate: TakesLimits
    budget: TakesBudget
    link_metrics: TakesConnectors
    services: TakesServices
    balancers: TakesBalancers | None
    member: TakesCluster | None
    drain: TakesGrace
    public: Replans


class DmzReload:
    """Holds the running configuration; ``reload`` replaces it or says why not."""

    def __init__(self, config: DmzConfig, phase: Phase, parts: ReloadParts) -> None:
        self.config = config
        self.phase = phase
        self.parts = parts

    def reload(self) -> None:
        source = self.config.source
        if source is None or self.phase.draining:
            return

        def load() -> tuple[DmzConfig, TLSMaterial]:
            new = load_dmz_config(source)
            fixed = restart_only_changes(self.config, new)
            if fixed:
                raise ConfigError("", f"{'; '.join(fixed)} (restart the gateway for that)")
            return new, self.parts.tls.load(new)

        loaded = checked_reload(str(source), log, load)
        if loaded is None:
            return
        new, material = loaded
        old, self.config = self.config, new
        self.apply(new, material)
        added, removed, changed = service_changes(old, new)
        log.info(
            "reloaded {source}: services added: {added}; removed: {removed}; changed: {changed}; "
            "{n} connectors listed; certificates and keys reloaded for new handshakes",
            source=str(source), added=", ".join(added) or "none", removed=", ".join(removed) or "none",
            changed=", ".join(changed) or "none", n=len(new.backplane.connectors),
        )  # fmt: skip

    def apply(self, new: DmzConfig, material: TLSMaterial) -> None:
        """Each part its piece, in an order that keeps every reader consistent: the registries
        before the metrics they trigger and the listener plan that reads them."""
        parts = self.parts
        parts.backplane.config = new
        parts.tls.apply(new, material)
        parts.gate.gateway = new.limits
        parts.budget.limit = new.buffer_budget
        parts.drain.grace_period = new.grace_period
        parts.link_metrics.reconfigure(list(new.backplane.connectors), [s.name for s in new.services if not s.is_balancer])
        parts.services.apply(new)  # re-judges the links: the link metrics recount
        if parts.balancers is not None:
            parts.balancers.apply(new.services)
        if parts.member is not None and new.cluster is not None:
            parts.member.reconfigure(new.cluster)
        parts.public.replan()


def service_changes(old: DmzConfig, new: DmzConfig) -> tuple[list[str], list[str], list[str]]:
    """The services a reload adds, removes and changes (by name, in file order)."""
    before = {s.name: s for s in old.services}
    after = {s.name: s for s in new.services}
    added = [name for name in after if name not in before]
    removed = [name for name in before if name not in after]
    changed = [name for name in after if name in before and after[name] != before[name]]
    return added, removed, changed


def restart_only_changes(old: DmzConfig, new: DmzConfig) -> list[str]:
    """What a reload cannot apply: the gateway's identity and its own addresses."""
    problems = []
    if old.name != new.name:
        problems.append(f"dmz.name changed ({old.name!r} -> {new.name!r})")
    if old.backplane.accept != new.backplane.accept:
        problems.append("dmz.backplane.accept changed")
    if old.admin != new.admin:
        problems.append("dmz.admin changed")
    if (old.cluster is None) != (new.cluster is None):
        problems.append("[dmz.cluster] added or removed")
    elif old.cluster is not None and new.cluster is not None:
        if (old.cluster.name, old.cluster.accept) != (new.cluster.name, new.cluster.accept):
            problems.append("dmz.cluster.name or dmz.cluster.accept changed")
    return problems
