"""What the test authorization server adds to DOT: request counters, a log of every refresh
grant and revocation by token digest, a way to change the RFC 9207 ``iss`` while running, a
scope backend that accepts any scope, and the /test/ views the handle drives (health,
counters, users, clients, refresh and revocation logs, settings, OP sessions).

The /test/ views have no authentication: the server only ever listens on 127.0.0.1 for the
length of a test run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import urllib.parse
from collections import Counter

from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.scopes import SettingsScopes
from oauth2_provider.settings import oauth2_settings

from tests.support.oauth_server import clients, sessions

# Which DOT endpoint a request path is counted under.
_COUNTED = {
    "/o/introspect/": "introspection",
    "/o/token/": "token",
    "/o/revoke_token/": "revocation",
}
_lock = threading.Lock()
_counts: Counter[str] = Counter()
# One record per refresh grant / revocation request, in arrival order.
_refresh_log: list[dict] = []
_revocation_log: list[dict] = []
# None: DOT's own ``iss`` (or none, per its setting); a string: that value instead.
_iss_override: list[str | None] = [None]

# RFC 6749 section 3.3 scope-token characters.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


class CountingMiddleware:
    """Counts requests to the introspection, token and revocation endpoints (and, for
    introspection, the status answered), so tests can tell whether the gateway cached."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        name = _COUNTED.get(request.path)
        response = self.get_response(request)
        if name is not None:
            with _lock:
                _counts[name] += 1
                _counts[f"{name}.{response.status_code}"] += 1
        return response


def token_digest(token: str) -> str:
    """SHA-256 of a token, hex: what the logs keep instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _client_id(request: HttpRequest, form: dict[str, str]) -> str | None:
    """The client a token request authenticates as: HTTP Basic first, else the form's."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            pair = base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return urllib.parse.unquote_plus(pair.partition(":")[0])
    return form.get("client_id")


def _error_code(response: HttpResponse) -> str | None:
    try:
        return json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return None


class TokenUseMiddleware:
    """Logs every refresh-token grant (digest of the refresh token presented, client, status,
    error) and every revocation request, so that a test can prove that no refresh token was
    presented twice and that logout revoked what it should."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or request.path not in ("/o/token/", "/o/revoke_token/"):
            return self.get_response(request)
        # request.body first: it is kept, so DOT's view can still read the form.
        form = dict(urllib.parse.parse_qsl(request.body.decode("latin-1")))
        response = self.get_response(request)
        entry = {"client_id": _client_id(request, form), "status": response.status_code,
                 "error": _error_code(response) if response.status_code != 200 else None}
        if request.path == "/o/token/" and form.get("grant_type") == "refresh_token":
            entry["digest"] = token_digest(form.get("refresh_token", ""))
            with _lock:
                _refresh_log.append(entry)
        elif request.path == "/o/revoke_token/":
            entry["digest"] = token_digest(form.get("token", ""))
            entry["token_type_hint"] = form.get("token_type_hint")
            with _lock:
                _revocation_log.append(entry)
        return response


class AuthorizationIssMiddleware:
    """Replaces the RFC 9207 ``iss`` of authorization responses with a set value, so that a
    client's mix-up defence can be tested against a wrong issuer."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        override = _iss_override[0]
        if (override is None or request.path != "/o/authorize/"
                or response.status_code not in (301, 302, 303, 307)):
            return response
        parts = urllib.parse.urlsplit(response["Location"])
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if not any(key in ("code", "error") for key, _ in query):
            return response  # the login redirect, not an authorization response
        query = [(k, v) for k, v in query if k != "iss"] + [("iss", override)]
        response["Location"] = parts._replace(query=urllib.parse.urlencode(query)).geturl()
        return response


class AnyScopes(SettingsScopes):
    """Every syntactically valid scope is available, so a test can ask for whatever scopes
    its gateway route requires without the server's settings listing them."""

    def get_available_scopes(self, application=None, request=None, *args, **kwargs):
        requested = list(getattr(request, "scopes", None) or []) if request is not None else []
        return [*super().get_available_scopes(application, request),
                *(s for s in requested if _SCOPE_TOKEN.fullmatch(s))]

    def get_all_scopes(self) -> dict[str, str]:
        # The consent page looks every requested scope up for its description.
        return _Described(super().get_all_scopes())


class _Described(dict):
    def __missing__(self, scope: str) -> str:
        return scope


def health(request: HttpRequest) -> HttpResponse:
    """200 once the server answers (migrations and clients are done before it listens)."""
    return JsonResponse({"ok": True})


@csrf_exempt
def counters(request: HttpRequest) -> HttpResponse:
    """GET: the counters; DELETE: set them to zero (a shared server between tests)."""
    with _lock:
        if request.method == "DELETE":
            _counts.clear()
        return JsonResponse(dict(_counts))


@csrf_exempt
def users(request: HttpRequest) -> HttpResponse:
    """POST {"username", "password"}: create the user, or set the password of an existing one."""
    if request.method != "POST":
        return JsonResponse({"error": "method_not_allowed"}, status=405)
    body = json.loads(request.body)
    user, _ = get_user_model().objects.get_or_create(username=body["username"])
    user.set_password(body["password"])
    user.save()
    return JsonResponse({"username": user.get_username()}, status=201)


@csrf_exempt
def client_registration(request: HttpRequest) -> HttpResponse:
    """POST a client (see `clients.register`): created, or updated to exactly that."""
    if request.method != "POST":
        return JsonResponse({"error": "method_not_allowed"}, status=405)
    body = json.loads(request.body)
    try:
        clients.register(body)
    except (KeyError, ValueError) as error:  # ValidationError is a ValueError
        return JsonResponse({"error": "invalid_client_metadata", "detail": str(error)},
                            status=400)
    return JsonResponse({"client_id": body["client_id"]}, status=201)


def _log_view(log: list[dict]):
    """GET: the log's entries, in order; DELETE: forget them."""
    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        with _lock:
            if request.method == "DELETE":
                log.clear()
            return JsonResponse(list(log), safe=False)
    return view


refresh_log = _log_view(_refresh_log)
revocation_log = _log_view(_revocation_log)


@csrf_exempt
def runtime_settings(request: HttpRequest) -> HttpResponse:
    """POST {"authorization_response_iss": true | false | "<issuer to send instead>"}:
    whether authorization responses carry ``iss`` (and metadata advertises it), or a wrong
    one. GET: the current values."""
    if request.method == "POST":
        value = json.loads(request.body).get("authorization_response_iss")
        if isinstance(value, bool):
            # DOT reads its settings object on every request; this replaces the cached value.
            oauth2_settings.COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS = value
            _iss_override[0] = None
        elif isinstance(value, str):
            oauth2_settings.COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS = True
            _iss_override[0] = value
        else:
            return JsonResponse({"error": "authorization_response_iss: bool or string"},
                                status=400)
    return JsonResponse({
        "authorization_response_iss": _iss_override[0]
        or oauth2_settings.COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS})


def op_session(request: HttpRequest) -> HttpResponse:
    """GET ?username=: the user's ``sub`` in ID tokens and current ``sid`` (null if not
    logged in through the form)."""
    try:
        user = get_user_model().objects.get(username=request.GET.get("username", ""))
    except get_user_model().DoesNotExist:
        return JsonResponse({"error": "no such user"}, status=404)
    return JsonResponse({"sub": str(user.pk), "sid": sessions.current(user.pk)})


@csrf_exempt
def revoke_user_tokens(request: HttpRequest) -> HttpResponse:
    """POST {"username", "client_id" (optional)}: revoke the user's refresh tokens and delete
    their access tokens (for that client only, if given), as an administrator would; the
    next refresh with any of them gets invalid_grant. Answers how many of each it ended."""
    from oauth2_provider.models import get_access_token_model, get_refresh_token_model

    if request.method != "POST":
        return JsonResponse({"error": "method_not_allowed"}, status=405)
    body = json.loads(request.body)
    scope = {"user__username": body["username"]}
    if body.get("client_id"):
        scope["application__client_id"] = body["client_id"]
    refresh_tokens = list(get_refresh_token_model().objects.filter(revoked__isnull=True, **scope))
    for refresh_token in refresh_tokens:
        refresh_token.revoke()  # deletes its access token too
    deleted, _ = get_access_token_model().objects.filter(**scope).delete()
    return JsonResponse({"refresh_tokens": len(refresh_tokens), "access_tokens": deleted})
