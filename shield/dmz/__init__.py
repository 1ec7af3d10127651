"""The DMZ gateway: backplane (links the connectors dialled in), router, frontplane (public clients).

- ``links``: which connector links are up, what they offer, and the choice of link per client.
- ``backplane``: accepts mutual-TLS links and their announcements.
- ``tunnel``: opens one stream per public client and waits for the connector's answer.
- ``frontplane_tcp`` / ``frontplane_ws``: public TCP/TLS and WebSocket listeners.
- ``gateway``: the twistd service tying them together.
"""
