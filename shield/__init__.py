"""shield: a reverse-connectivity tunnel on Twisted.

Rooms of the house:

- ``shield.mux``: the yamux multiplexer, a sans-IO core plus a thin Twisted adapter.
"""

__version__ = "0.1.0"
