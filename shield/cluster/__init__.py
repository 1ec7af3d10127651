"""The DMZ cluster: member-to-member links, heartbeats, membership, forwarding for balancers.

A member talks to its peers over mutual-TLS links carrying yamux (the same mux as the backplane).
Each side of a link opens one heartbeat stream and writes its state there every interval; a
balancer opens one stream per client it forwards to a peer. Nothing here knows about connectors
or public protocols: the gateway tells the cluster its own state and serves forwarded clients.
"""
