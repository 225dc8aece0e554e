"""A scripted browser without a browser: urllib with a cookie jar that never follows a
redirect by itself, so that a test sees (and may stop at, or tamper with) every hop of a
login.

    browser = Browserless(ca=ca)                     # a trustme.CA (or an SSLContext) for https
    hops = browser.login(gateway_url + "/app", "alice", password)
    hops[-1].status, hops[-1].body                   # the page the login ended on
    [hop.url for hop in hops]                        # gateway -> AS authorize -> login form ->
                                                     # authorize -> callback -> gateway /app
    browser.cookie("__Host-fluxgate-session")        # what the jar holds

`login` follows redirects, submits the authorization server's login form (Django: GET the
page, read ``csrfmiddlewaretoken``, POST username and password with the CSRF cookie) and, if
the server shows one, its consent form. ``stop`` ends the walk before a URL is fetched (e.g.
to replay or alter the callback); the last hop's ``location`` is then that URL.
"""

from __future__ import annotations

import html.parser
import http.cookiejar
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class Hop:
    """One request and its response."""

    method: str
    url: str
    status: int
    headers: Message
    body: bytes

    @property
    def location(self) -> str | None:
        """The absolute redirect target, if this response redirects."""
        target = self.headers.get("Location")
        if self.status not in _REDIRECTS or target is None:
            return None
        return urllib.parse.urljoin(self.url, target)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def query(self) -> dict[str, str]:
        """The redirect target's query parameters (e.g. code, state, iss at a callback)."""
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.location or "").query))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _EveryStatus(urllib.request.HTTPErrorProcessor):
    """Hands every response back as it is: a 302 or a 401 is what the test looks at."""

    def http_response(self, request, response):
        return response

    https_response = http_response


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


class LoopbackIsSecure(http.cookiejar.DefaultCookiePolicy):
    """Sends Secure cookies over plain http to loopback, as chromium does (it treats
    http://127.0.0.1 and http://localhost as potentially trustworthy origins, and stores and
    sends ``Secure`` and ``__Host-`` cookies there); http.cookiejar alone never would."""

    def return_ok_secure(self, cookie, request) -> bool:
        host = urllib.parse.urlsplit(request.full_url).hostname or ""
        if cookie.secure and request.type == "http" and host in _LOOPBACK_HOSTS:
            return True
        return super().return_ok_secure(cookie, request)


class LoginFailed(AssertionError):
    """The walk did not get where a login should: the hops so far are attached."""

    def __init__(self, message: str, hops: list[Hop]) -> None:
        trail = "\n".join(f"  {h.method} {h.url} -> {h.status}" for h in hops)
        super().__init__(f"{message}\n{trail}")
        self.hops = hops


class Browserless:
    """Cookies kept per RFC 6265 by http.cookiejar (Secure ones sent over https, and over
    http to loopback unless ``loopback_is_secure=False``); redirects returned, never
    followed."""

    def __init__(self, *, ca: Any = None, timeout: float = 10.0,
                 user_agent: str = "fluxgate-tests-browserless",
                 loopback_is_secure: bool = True) -> None:
        if isinstance(ca, ssl.SSLContext):
            context = ca
        else:
            context = ssl.create_default_context()
            if ca is not None:
                ca.configure_trust(context)
        self.jar = http.cookiejar.CookieJar(
            LoopbackIsSecure() if loopback_is_secure else http.cookiejar.DefaultCookiePolicy())
        self.timeout = timeout
        self.user_agent = user_agent
        self.history: list[Hop] = []
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar),
            urllib.request.HTTPSHandler(context=context),
            _NoRedirects(), _EveryStatus())

    # ---- single requests ------------------------------------------------------------------

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Hop:
        """One request with the jar's cookies; the response, whatever its status."""
        request = urllib.request.Request(url, data=body, method=method, headers={
            "User-Agent": self.user_agent, "Accept": "text/html,*/*;q=0.8", **(headers or {})})
        try:
            response = self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:  # not raised with _EveryStatus; kept safe
            response = error
        with response:
            hop = Hop(method, url, response.status, response.headers, response.read())
        self.history.append(hop)
        return hop

    def get(self, url: str, headers: dict[str, str] | None = None) -> Hop:
        return self.request("GET", url, headers=headers)

    def post_form(self, url: str, fields: dict[str, str] | list[tuple[str, str]],
                  headers: dict[str, str] | None = None) -> Hop:
        """POST a form as a browser submits one: urlencoded, with its ``Origin``."""
        parts = urllib.parse.urlsplit(url)
        return self.request("POST", url, urllib.parse.urlencode(fields).encode(), {
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": f"{parts.scheme}://{parts.netloc}", "Referer": url, **(headers or {})})

    def cookie(self, name: str) -> str | None:
        """The value of the first cookie of that name in the jar."""
        return next((c.value for c in self.jar if c.name == name), None)

    def cookies(self) -> list[http.cookiejar.Cookie]:
        return list(self.jar)

    # ---- walks ------------------------------------------------------------------------------

    def follow(self, hop: Hop, *, stop: Callable[[str], bool] | None = None,
               limit: int = 20) -> list[Hop]:
        """Follow ``hop``'s redirects with GET; the hops fetched (none if it does not
        redirect). Stops before fetching a URL for which ``stop`` is true."""
        hops: list[Hop] = []
        while (target := hop.location) is not None and (stop is None or not stop(target)):
            if len(hops) >= limit:
                raise LoginFailed(f"more than {limit} redirects", hops)
            hop = self.get(target)
            hops.append(hop)
        return hops

    def login(self, url: str, username: str, password: str, *, approve: bool = True,
              stop: Callable[[str], bool] | None = None, limit: int = 20) -> list[Hop]:
        """GET ``url`` and walk the login: redirects followed, the login form and (if shown)
        the consent form submitted. The hops, ending at the first page that is neither a
        redirect nor one of those forms, or before a URL for which ``stop`` is true."""
        hops = [self.get(url)]
        submitted_login = False
        while len(hops) <= limit:
            hop = hops[-1]
            if hop.location is not None:
                if stop is not None and stop(hop.location):
                    return hops
                hops.append(self.get(hop.location))
                continue
            form = find_form(hop)
            if form is None or hop.status != 200:
                return hops
            if "password" in form.fields:
                if submitted_login:
                    raise LoginFailed("the login form came back: wrong credentials?", hops)
                submitted_login = True
                fields = {**form.fields, "username": username, "password": password}
                hops.append(self.post_form(form.action, fields))
            elif "allow" in form.buttons:
                fields = dict(form.fields)
                if approve:
                    fields["allow"] = form.buttons["allow"]
                hops.append(self.post_form(form.action, fields))
            else:
                return hops
        raise LoginFailed(f"more than {limit} hops", hops)


@dataclass
class Form:
    """The first form of a page: absolute action, fields (hidden and filled), buttons."""

    action: str
    fields: dict[str, str]
    buttons: dict[str, str]


class _FormParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.form: dict[str, Any] | None = None
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.form is None:
            self.form = {"action": a.get("action", ""), "fields": {}, "buttons": {}}
        elif self.form is not None and tag in ("input", "button") and a.get("name"):
            kind = a.get("type", "submit" if tag == "button" else "text").lower()
            if kind == "submit":
                self.form["buttons"][a["name"]] = a.get("value", "")
            elif kind not in ("checkbox", "radio") or "checked" in a:
                self.form["fields"][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self.form is not None:
            self.done = True


def find_form(hop: Hop) -> Form | None:
    """The first form of an HTML page, or None."""
    if "html" not in hop.headers.get("Content-Type", ""):
        return None
    parser = _FormParser()
    parser.feed(hop.text)
    if parser.form is None:
        return None
    return Form(urllib.parse.urljoin(hop.url, parser.form["action"]),
                parser.form["fields"], parser.form["buttons"])
