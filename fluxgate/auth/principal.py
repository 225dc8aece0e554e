"""The principal: who a request is, whatever method proved it.

Quotas, logs, metrics and the upstream headers all read this one object.
"""

from __future__ import annotations


class Principal:
    """An authenticated caller; treat as immutable (it is shared by every request of a
    cached credential).

    A plain slotted class rather than a frozen dataclass: one is built per newly verified
    token, and a frozen dataclass's field-by-field ``object.__setattr__`` made that the
    largest Python cost of a first-seen JWT.
    """

    __slots__ = ("id", "method", "subject", "scopes", "key_name", "claims_headers",
                 "_headers", "upstream_lines")  # fmt: skip

    def __init__(
        self,
        id: str,  # noqa: A002 - "jwt:<iss>|<sub>", "key:<name>": the stable identity for quotas
        method: str,  # "jwt", "oauth2" or "api_key" (the X-FluxGate-Auth value)
        subject: str,  # sub claim or key name (the X-FluxGate-Subject value)
        scopes: frozenset[str] = frozenset(),
        key_name: str | None = None,
        claims_headers: tuple[tuple[bytes, bytes], ...] = (),  # forward_claims, encoded
    ) -> None:
        self.id = id
        self.method = method
        self.subject = subject
        self.scopes = scopes
        self.key_name = key_name
        self.claims_headers = claims_headers
        headers = (
            (b"X-FluxGate-Auth", method.encode()),
            (b"X-FluxGate-Subject", _header_safe(subject)),
            (b"X-FluxGate-Scopes", _header_safe(" ".join(sorted(scopes))) if scopes else b""),
            *claims_headers,
        )
        self._headers = headers
        # The same headers as formatted lines, as the upstream request head carries them.
        self.upstream_lines = b"".join([name + b": " + value + b"\r\n" for name, value in headers])

    def upstream_headers(self) -> list[tuple[bytes, bytes]]:
        """The X-FluxGate-* headers the upstream receives."""
        return list(self._headers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Principal):
            return NotImplemented
        return (self.id, self.method, self.subject, self.scopes, self.key_name,
                self.claims_headers) == (other.id, other.method, other.subject, other.scopes,
                                         other.key_name, other.claims_headers)  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.id, self.method, self.subject, self.scopes, self.key_name))

    def __repr__(self) -> str:
        return f"Principal(id={self.id!r}, method={self.method!r}, scopes={sorted(self.scopes)!r})"


_CONTROLS = dict.fromkeys([*range(0x20), 0x7F])


def _header_safe(text: str) -> bytes:
    """A header value that cannot split the head: controls and non-ASCII dropped."""
    if text.isascii() and text.isprintable():  # the common case: nothing to drop
        return text.encode()
    return text.translate(_CONTROLS).encode("ascii", "ignore")
