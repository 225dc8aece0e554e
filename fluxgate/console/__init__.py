"""The web console on the admin listener (``/console``): live traffic, auth failures, API
keys, JWKS and authorization-server health, sessions, workers and routes, behind a sign-in
with the admin token. ``app.py`` serves it, ``guard.py`` holds its security rules,
``sessions.py`` its sign-in sessions, ``traffic.py`` the rates and percentiles, ``views.py``
the master's state as JSON, ``static/`` the page (HTML, CSS and vanilla JavaScript, shipped in
the package; nothing is fetched from elsewhere). See docs/console.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fluxgate.console.app import Console
    from fluxgate.master.admin import AdminRouter

__all__ = ["mount_console"]


def mount_console(router: AdminRouter, master: Any) -> Console:
    """Serve the console on the admin ``router`` for ``master`` (the arbiter)."""
    from fluxgate.console.app import Console

    console = Console(router, master)
    console.mount()
    return console
