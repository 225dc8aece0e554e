"""A finding: what an operator should know about a route or a server, as a stable code, a
severity and one line (``fluxctl auth verify``, ``fluxctl oauth2 configure``)."""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # one of SEVERITIES
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "message": self.message}


def worst(findings: list[Finding]) -> str | None:
    return max((f.severity for f in findings), key=SEVERITIES.index, default=None)
