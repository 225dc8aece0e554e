"""The principal: who a request is, whatever method proved it (DESIGN §3).

Quotas, logs, metrics and the upstream headers all read this one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    id: str  # stable identity for quotas: "jwt:<iss>|<sub>", "key:<name>", ...
    method: str  # "jwt", "oauth2" or "api_key" (the X-FluxGate-Auth value)
    subject: str  # sub claim or key name (the X-FluxGate-Subject value)
    scopes: frozenset[str] = field(default_factory=frozenset)
    key_name: str | None = None
    claims_headers: tuple[tuple[bytes, bytes], ...] = ()  # forward_claims, already encoded
    # Encoded once: a principal is reused for every request of a cached credential.
    _headers: tuple[tuple[bytes, bytes], ...] = field(
        default=(), init=False, repr=False, compare=False
    )
    # The same headers as formatted lines, as the upstream request head carries them.
    upstream_lines: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        headers = (
            (b"X-FluxGate-Auth", self.method.encode()),
            (b"X-FluxGate-Subject", _header_safe(self.subject)),
            (b"X-FluxGate-Scopes", _header_safe(" ".join(sorted(self.scopes)))),
            *self.claims_headers,
        )
        object.__setattr__(self, "_headers", headers)  # frozen: set once, here
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        object.__setattr__(self, "upstream_lines", lines)

    def upstream_headers(self) -> list[tuple[bytes, bytes]]:
        """The X-FluxGate-* headers the upstream receives (DESIGN §4)."""
        return list(self._headers)


_CONTROLS = dict.fromkeys([*range(0x20), 0x7F])


def _header_safe(text: str) -> bytes:
    """A header value that cannot split the head: controls and non-ASCII dropped."""
    if text.isascii() and text.isprintable():  # the common case: nothing to drop
        return text.encode()
    return text.translate(_CONTROLS).encode("ascii", "ignore")
