"""/metrics series of cluster mode's OAuth parts: the sessions' store and the shared
introspection results (counted by ``cluster/session_sync.py`` and
``cluster/introspection.py``; outages are logged there once per change of state)."""

from __future__ import annotations

from fluxgate.cluster.introspection import SharedResults
from fluxgate.cluster.session_sync import ClusterSessions
from fluxgate.metrics import ProcessMetric, metric_family

# (key of ClusterSessions.status(), metric name, kind, help)
_SESSION_SERIES = (
    ("up", "fluxgate_cluster_sessions_store_up", "gauge",
     "Whether the last call to Redis for sessions succeeded."),
    ("failures", "fluxgate_cluster_sessions_store_failures_total", "counter",
     "Calls to Redis for sessions that failed or timed out."),
    ("sweeps", "fluxgate_cluster_sessions_sweeps_total", "counter",
     "Complete comparisons of this node's session copies with Redis."),
    ("synced_at", "fluxgate_cluster_sessions_synced_timestamp", "gauge",
     "When this node's session copies were last compared with Redis."),
    ("events_applied", "fluxgate_cluster_sessions_events_total", "counter",
     "Session events from other nodes applied to this node's copies."),
    ("fetches_refused", "fluxgate_cluster_sessions_fetches_refused_total", "counter",
     "Session reads for workers refused (503): too many in flight."),
)


def cluster_oauth2_metrics(sessions: object, shared: SharedResults | None
                           ) -> list[ProcessMetric]:
    """The series of the sessions' store (a ``ClusterSessions``) and of the shared
    introspection results; none on one node."""
    out: list[ProcessMetric] = []
    if isinstance(sessions, ClusterSessions):
        status = sessions.status()
        for key, name, kind, text in _SESSION_SERIES:
            out += metric_family(name, kind, text, [((), float(status[key]))])
    if shared is not None:
        out += metric_family("fluxgate_cluster_introspection_total", "counter",
                             "Lookups and stores of shared introspection results by outcome.",
                             [((("outcome", k),), v) for k, v in shared.counts.items()])
        out += metric_family("fluxgate_cluster_introspection_store_up", "gauge",
                             "Whether the last call to Redis for introspection results "
                             "succeeded.", [((), float(shared.up))])
    return out
