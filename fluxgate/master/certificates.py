"""What the master says about the listener's certificates: the expiry gauge on /metrics and
a warning in the log when a generation starts with one about to expire.

The certificates are those the current generation of workers presents (read when it was
built, at start or SIGHUP), so the gauge moves when a reload installs a renewed file.
"""

from __future__ import annotations

import logging
import time

from fluxgate.metrics import ProcessMetric, metric_family
from fluxgate.tls import EXPIRING_SOON, ListenerTls

log = logging.getLogger("fluxgate.master")

EXPIRY_METRIC = "fluxgate_tls_certificate_expiry_timestamp_seconds"


def expiry_metrics(listener: str, tls: ListenerTls | None) -> list[ProcessMetric]:
    """``fluxgate_tls_certificate_expiry_timestamp_seconds{listener,subject}``: the Unix
    time each presented certificate expires (nothing for a plain HTTP listener)."""
    if tls is None:
        return []
    return metric_family(
        EXPIRY_METRIC, "gauge",
        "When each certificate the listener presents expires (Unix time).",
        [((("listener", listener), ("subject", info.subject)), info.not_after)
         for info in tls.certificates],
    )


def log_expiry(tls: ListenerTls | None, now: float | None = None) -> None:
    """Warn about certificates that have expired or expire within ``EXPIRING_SOON``."""
    if tls is None:
        return
    now = time.time() if now is None else now
    for info in tls.certificates:
        left = info.not_after - now
        if left <= 0:
            log.error("TLS certificate %s (%s) has expired: clients will refuse it",
                      info.path, info.subject)
        elif left < EXPIRING_SOON:
            log.warning("TLS certificate %s (%s) expires in %.1f days",
                        info.path, info.subject, left / 86400)
