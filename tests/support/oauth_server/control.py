"""What the test authorization server adds to DOT: request counters, a scope backend that
accepts any scope, and the /test/ views the handle drives (health, counters, users).

The /test/ views have no authentication: the server only ever listens on 127.0.0.1 for the
length of a test run.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter

from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.scopes import SettingsScopes

# Which DOT endpoint a request path is counted under.
_COUNTED = {
    "/o/introspect/": "introspection",
    "/o/token/": "token",
    "/o/revoke_token/": "revocation",
}
_lock = threading.Lock()
_counts: Counter[str] = Counter()

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


class AnyScopes(SettingsScopes):
    """Every syntactically valid scope is available, so a test can ask for whatever scopes
    its gateway route requires without the server's settings listing them."""

    def get_available_scopes(self, application=None, request=None, *args, **kwargs):
        requested = list(getattr(request, "scopes", None) or []) if request is not None else []
        return [*super().get_available_scopes(application, request),
                *(s for s in requested if _SCOPE_TOKEN.fullmatch(s))]


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
