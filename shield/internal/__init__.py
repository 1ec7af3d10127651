"""The internal gateway (connector): dials out to the DMZ and serves tunnels from its own config.

- ``pool``: for every backplane endpoint, ``links`` slots that keep a link up with backoff.
- ``link``: one link: mutual TLS, yamux client, the announcement on its control stream.
- ``backend``: each DMZ-opened stream: OPEN, dial the configured backend, answer, relay.
- ``gateway``: the twistd service tying them together.
"""
