# cython: language_level=3
"""FluxGate hot path (see _core.pxd for the contract)."""
