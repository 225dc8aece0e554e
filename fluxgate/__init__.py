"""FluxGate: a zero-trust API gateway with a Cython hot path."""

__version__ = "0.1.0"
