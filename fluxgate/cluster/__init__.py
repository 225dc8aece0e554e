"""Cluster mode: several gateway nodes sharing one Redis (``store: redis://...``).

Redis holds what every node must agree on (API keys and their revocations, quota budgets,
OAuth sessions, introspection results); each node keeps its own memory-mapped tables and
keys.db as the fast path and the offline fallback. ``connect`` turns the ``store`` URL and
the ``cluster`` settings into redis-py clients.
"""
