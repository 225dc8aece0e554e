"""Findings for an oauth2 entry with ``login: true`` (the browser login), for ``fluxctl auth
verify``; ``audit.oauth2_findings`` hands login entries here.

What the config check already refuses (a plain-http redirect_uri off loopback, no openid
in login_scopes, idle longer than absolute, plain PKCE) is not repeated. Each finding
says what happens and the one change that fixes it. The resource-server findings
(audience, cache_ttl, miss_rate) do not apply: a login route introspects nothing.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from fluxgate.cli.findings import Finding
from fluxgate.config import schema
from fluxgate.config.parsers import is_loopback

LONG_SESSION = 7 * 86400.0  # an absolute lifetime past this outlives a stolen laptop's week
API_LOOKING = re.compile(r"(^|/)(api|graphql|rpc)(/|$)", re.IGNORECASE)


def login_findings(config: schema.Config, entry: schema.OAuth2) -> list[Finding]:
    """The findings of ``entry`` itself (its kind's ``findings`` hook, through
    ``audit.oauth2_findings``)."""
    return [*_lifetimes(entry), *_logout(entry), *_origins(entry), *_upstream(entry),
            *_plain_http(entry)]


def login_route_findings(route: schema.Route, entry: schema.OAuth2) -> list[Finding]:
    """The findings that depend on the route ``entry`` guards: an API-looking path
    answered with redirects."""
    if entry.api_paths or not API_LOOKING.search(route.route):
        return []
    return [Finding(
        "login_api_paths_missing", "warning",
        f"the route {route.route} looks like an API but api_paths is empty: a script "
        "that sends Accept: */* (fetch's default) without a session gets a 302 to the "
        f"login page instead of a 401 (add api_paths: [{route.route}])")]


def _lifetimes(entry: schema.OAuth2) -> list[Finding]:
    found = []
    session = entry.session
    if session.absolute > LONG_SESSION:
        found.append(Finding(
            "login_long_session", "warning",
            f"session.absolute is {session.absolute / 86400:g} days: a session cookie taken "
            "from a browser works that long whatever the server decides later (set "
            "session.absolute to 7d or less; refresh keeps active users signed in)"))
    if session.idle >= session.absolute:
        found.append(Finding(
            "login_idle_not_shorter", "info",
            f"session.idle equals session.absolute ({session.idle:g}s): an unattended "
            "browser stays signed in for the whole lifetime (set session.idle shorter, "
            "e.g. 8h)"))
    return found


def _logout(entry: schema.OAuth2) -> list[Finding]:
    found = []
    if entry.post_logout_redirect_uri is None:
        found.append(Finding(
            "login_no_post_logout_redirect", "warning",
            "no post_logout_redirect_uri: after logout the server's end_session page has "
            "nowhere to send the user back to (without an end_session_endpoint the browser "
            "lands on / of this site, which starts a new login); set it to a signed-out "
            "page registered at the server"))
    if entry.backchannel_logout_path is None:
        found.append(Finding(
            "login_no_backchannel", "info",
            "no backchannel_logout_path: a logout at the server (or an administrator ending "
            "the user's session there) leaves the gateway's session alive until "
            "session.idle or session.absolute (set backchannel_logout_path, e.g. "
            "/.fluxgate/backchannel-logout, and register it at the server)"))
    return found


def _plain_http_origins(origins: list[str]) -> list[str]:
    return [o for o in origins if o.lower().startswith("http://")
            and not is_loopback(urlsplit(o).hostname or "")]


def _origins(entry: schema.OAuth2) -> list[Finding]:
    found = []
    plain = _plain_http_origins(entry.allowed_return_origins)
    if plain:
        found.append(Finding(
            "login_wide_return_origins", "warning",
            f"allowed_return_origins has plain-http {', '.join(plain)}: a user just signed "
            "in is sent to a page anyone on the network can rewrite (list https origins "
            "only)"))
    plain = _plain_http_origins(entry.allowed_origins)
    if plain:
        found.append(Finding(
            "login_plain_http_origins", "warning",
            f"allowed_origins has plain-http {', '.join(plain)}: a script injected into "
            "that page on the network can make unsafe requests and open WebSockets with the "
            "user's session (list https origins only)"))
    return found


def _upstream(entry: schema.OAuth2) -> list[Finding]:
    found = []
    if entry.forward_access_token:
        found.append(Finding(
            "login_access_token_forwarded", "info",
            "forward_access_token: the upstream receives the user's access token "
            "(Authorization: Bearer) and can call every API that token is good for; keep "
            "it out of the upstream's logs, or turn it off if the principal headers do"))
    missing = sorted(set(entry.scopes) - set(entry.login_scopes))
    if missing:
        found.append(Finding(
            "login_scopes_not_requested", "warning",
            f"scopes requires {' '.join(missing)}, which login_scopes does not ask for: a "
            "server grants what is asked, so signed-in users get 403 (add them to "
            "login_scopes)"))
    return found


def _plain_http(entry: schema.OAuth2) -> list[Finding]:
    found = []
    plain = [field for field in ("redirect_uri", "post_logout_redirect_uri")
             if (getattr(entry, field) or "").lower().startswith("http://")]
    if plain:
        # The checker allows plain http to loopback only: a developer's machine.
        found.append(Finding(
            "login_plain_http_loopback", "info",
            f"{' and '.join(plain)} {'is' if len(plain) == 1 else 'are'} plain http on "
            "loopback: for development only (a session cookie over plain http elsewhere "
            "would be stolen)"))
    if entry.issuer is not None and entry.issuer.lower().startswith("http://"):
        found.append(Finding(
            "oauth2_plain_http_loopback", "info",
            f"oauth2 issuer is plain http on loopback ({urlsplit(entry.issuer).hostname}): "
            "codes, tokens and the client secret cross in clear text; acceptable only for "
            "a server on this machine"))
    return found
