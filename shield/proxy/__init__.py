"""Egress through an HTTP CONNECT proxy: the connector's links to the DMZ when its network lets
nothing out but a proxy. ``connect.py`` is the protocol (sans-IO), ``endpoint.py`` the Twisted
endpoint the link's TLS runs over, end to end through the proxy."""
