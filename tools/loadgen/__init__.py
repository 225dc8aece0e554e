"""FluxGate's HTTP/1.1 load generator: ``python -m tools.loadgen URL`` or ``run_load(url, …)``.

Closed or open loop (coordinated-omission-free), keep-alive connections on uvloop, responses parsed
by llhttp (httptools), several worker processes, HDR-style latency histogram, rotating headers.
Loopback targets only unless told otherwise.  See README.md.
"""

from .histogram import Histogram
from .runner import run_load
from .target import TargetRefused

__all__ = ["Histogram", "TargetRefused", "run_load"]
