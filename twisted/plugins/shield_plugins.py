"""twistd plugins: ``twistd shield-dmz`` and ``twistd shield-internal``."""

from twisted.application.service import ServiceMaker

shield_dmz = ServiceMaker("shield DMZ gateway", "shield.tap.dmz", "shield DMZ gateway (public side)", "shield-dmz")
shield_internal = ServiceMaker(
    "shield internal gateway", "shield.tap.internal", "shield internal gateway (connector)", "shield-internal"
)
