"""The principal: who a request is, whatever method proved it.

Quotas, logs, metrics and the upstream headers all read this one object:

* ``id``: the stable identity quotas count by (``jwt:<iss>|<sub>``, ``key:<name>``, ...);
* ``method``: ``jwt``, ``oauth2`` or ``api_key`` (the X-FluxGate-Auth value);
* ``subject``: the sub claim or the key name (X-FluxGate-Subject);
* ``scopes``: a frozenset (X-FluxGate-Scopes, sorted and space-separated);
* ``key_name``: the API key's name, or None;
* ``claims_headers``: the jwt ``forward_claims`` headers, encoded;
* ``upstream_lines``: all these headers as the upstream request head carries them.

``Principal(id, method, subject, scopes=frozenset(), key_name=None, claims_headers=())``
builds one. Treat it as immutable: it is shared by every request of a cached credential.
The class is compiled (``fluxgate._core``): a jwt route builds one per newly verified
token from a new caller, and as a Python class that was the largest Python cost of a
verified-token cache miss. Header values keep printable ASCII only, so no subject or scope
can split the request head.
"""

from __future__ import annotations

from fluxgate._core import Principal

__all__ = ["Principal"]
