"""shield's benchmark suite: shield (ws:// and tcp://) against ``ssh -R`` and the backend directly.

``make bench`` (or ``python -m benchmarks``) runs it; ``make bench QUICK=1`` runs a reduced version.
See docs/performance.md.
"""
