"""The OP session id (``sid``) of each user's browser login, for ID tokens and back-channel
logout tokens: a new random one at every login through the login form, none after logout.

One per user rather than per browser: the tests log a user in from one browser at a time.
"""

from __future__ import annotations

import secrets
import threading

_lock = threading.Lock()
_sids: dict[int, str] = {}


def started(user_pk: int) -> str:
    """A new OP session for the user (a login); its sid."""
    sid = secrets.token_urlsafe(16)
    with _lock:
        _sids[user_pk] = sid
    return sid


def ended(user_pk: int) -> None:
    with _lock:
        _sids.pop(user_pk, None)


def current(user_pk: int | None) -> str | None:
    """The user's current sid, if logged in through the form."""
    with _lock:
        return _sids.get(user_pk) if user_pk is not None else None


def connect_signals() -> None:
    """Follow Django's login and logout (RP-initiated logout logs the user out too)."""
    from django.contrib.auth.signals import user_logged_in, user_logged_out

    user_logged_in.connect(lambda sender, request, user, **kw: started(user.pk), weak=False)
    user_logged_out.connect(
        lambda sender, request, user, **kw: user is not None and ended(user.pk), weak=False)
