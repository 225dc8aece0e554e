"""The admin API: a small, strict HTTP/1.1 server on the master's event loop.

Endpoints (the bearer token is required unless said otherwise):

* ``GET /healthz`` - 200 while the master runs. Unauthenticated.
* ``GET /readyz`` - 200 when every worker of the current generation is ready, else 503.
  Unauthenticated: like Envoy's ``/ready`` it is meant for load balancers and orchestrators,
  which do not hold secrets, and it reveals nothing but "up / not up".
* ``GET /metrics`` - Prometheus text.
* ``GET /admin/routes`` - the routes in force and their middleware chains, as JSON (what
  ``fluxctl routes explain`` prints of a route; no secret).
* ``POST /admin/reload`` - the same reload as SIGHUP. 200 with the new generation, its
  workers and routes; 422 with the key path, line and message of an invalid config; 409 when
  a valid config could not be put in force. On any error the old config keeps serving.
* ``GET|POST /admin/keys``, ``GET /admin/keys/show``, ``GET /admin/keys/usage``,
  ``POST /admin/keys/rotate|renew|revoke`` - API keys (fluxgate/master/keys.py).
* ``GET /admin/jwks``, ``POST /admin/jwks/refresh`` - signing-key sets (master/jwks.py).
* ``GET /admin/oauth2``, ``POST /admin/oauth2/purge`` - token introspection and browser
  logins (master/sidepool.py).
* ``GET /console`` (and ``/console/``), ``GET|POST /console/login``, ``POST /console/logout``,
  ``GET /console/static/<asset>``, ``GET /console/api/session|live|keys|health|routes``,
  ``POST /console/api/keys``, ``/console/api/keys/rotate|revoke`` - the web console
  (fluxgate/console, docs/console.md). No bearer token: it signs in with the admin token
  into a session cookie, and its state-changing calls carry a CSRF token.

Every error is ``{"error", "error_description", "request_id"}`` in JSON with its status:
401 without the token or with a wrong one (before any 404 or 405 on a protected path), 404
for an unknown path, 405 with ``Allow`` for a method the path does not take, 400 for a
malformed request or a body that is not the JSON object an endpoint expects, 413 and 431
for oversized bodies and heads. Every reply carries ``X-Request-Id`` and
``Cache-Control: no-store``.

The listener only binds loopback (``sockets.bind_admin``). The token is ``admin.token`` from
the config, or one generated once into ``state_dir/admin.token`` (mode 0600) and reused on
later starts; it is compared in constant time and never logged.
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httptools
import orjson

from fluxgate.errors import (
    BadRequest,
    BodyTooLarge,
    ClientError,
    ConfigError,
    HeadersTooLarge,
    InternalError,
    InvalidToken,
    MethodNotAllowed,
    MissingCredentials,
    NoRoute,
)
from fluxgate.proxy.app import route_methods
from fluxgate.proxy.responses import error_response, status_line

if TYPE_CHECKING:
    from fluxgate.config.schema import Config

log = logging.getLogger("fluxgate.master")

MAX_HEADER_BYTES = 16 * 1024  # request line + headers; admin requests are tiny
MAX_BODY_BYTES = 64 * 1024
MAX_PIPELINED = 16  # parsed requests waiting for a response before reading pauses
REQUEST_TIMEOUT = 10.0  # from the first byte of a request to its last
IDLE_TIMEOUT = 60.0
TOKEN_FILE = "admin.token"

# ---- what the admin API needs from the master -----------------------------------------------


@dataclass(frozen=True)
class ReloadResult:
    """Outcome of one reload (SIGHUP or POST /admin/reload)."""

    ok: bool
    generation: int
    workers: int
    routes: int
    error: str | None = None
    # The ConfigError that refused the new config (its key path and line), if that was why.
    cause: BaseException | None = None

    @property
    def status(self) -> int:
        """The HTTP status of POST /admin/reload: 200, 422 for an invalid config, else 409
        (the config was valid but could not be put in force, e.g. its workers did not boot).
        The old config keeps serving on any error."""
        if self.ok:
            return 200
        return 422 if isinstance(self.cause, ConfigError) else 409

    def as_dict(self) -> dict[str, object]:
        """The JSON body of POST /admin/reload (the request id is added by the handler)."""
        if self.ok:
            return {"status": "reloaded", "generation": self.generation,
                    "workers": self.workers, "routes": self.routes}
        body: dict[str, object] = {
            "error": "invalid_config" if self.status == 422 else "reload_failed",
            "error_description": self.error, "generation": self.generation,
        }
        if isinstance(self.cause, ConfigError):
            # Every error found (a config may hold several); path, line and message at the
            # top are the first one's.
            errors = [
                {"path": e.path or None, "line": e.line, "message": _bare_message(e)}
                for e in getattr(self.cause, "errors", None) or [self.cause]
            ]
            body.update(errors[0])
            body["errors"] = errors
        return body


def _bare_message(exc: ConfigError) -> str:
    """The message of ``exc`` without the "path (line N): " its text starts with."""
    text = str(exc)
    if exc.path or exc.line is not None:
        return text.partition(": ")[2] or text
    return text


class AdminBackend(Protocol):
    """The master as the admin API sees it."""

    config: Config  # the config in force (the current generation's)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """(ready, details) for /readyz."""

    def metrics_text(self) -> str:
        """The Prometheus exposition for /metrics."""

    async def reload(self) -> ReloadResult:
        """Re-read the config and replace the workers (same as SIGHUP)."""


# ---- requests, responses, routing ------------------------------------------------------------


@dataclass
class AdminRequest:
    """One parsed admin request."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    request_id: str
    keep_alive: bool

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); a 400 for anything else."""
        if not self.body.strip():
            return {}
        try:
            value = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise BadRequest("the body must be a JSON object")
        return value


@dataclass
class AdminResponse:
    """A successful (non-error) admin reply; errors are ClientErrors."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def json(cls, status: int, payload: object) -> AdminResponse:
        """A JSON reply."""
        return cls(status, orjson.dumps(payload))


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


@dataclass(frozen=True)
class Endpoint:
    handler: Handler
    auth: bool


@dataclass
class AdminRouter:
    """Exact-path routes; each path maps methods to endpoints (HEAD follows GET)."""

    _routes: dict[str, dict[str, Endpoint]] = field(default_factory=dict)

    def add(self, method: str, path: str, handler: Handler, *, auth: bool = True) -> None:
        """Register ``handler`` for ``method path``; ``auth=False`` only for endpoints that
        reveal nothing (health checks)."""
        self._routes.setdefault(path, {})[method.upper()] = Endpoint(handler, auth)

    def requires_auth(self, path: str) -> bool:
        """True when ``path`` is unknown or every endpoint on it needs the token: a caller
        without it is then answered 401 before any 404 or 405, so it learns nothing about
        which paths and methods exist."""
        methods = self._routes.get(path)
        return not methods or all(e.auth for e in methods.values())

    def resolve(self, method: str, path: str) -> Endpoint:
        """The endpoint for ``method path``; raises NoRoute (404) or MethodNotAllowed (405)."""
        methods = self._routes.get(path)
        if methods is None:
            raise NoRoute(f"no admin endpoint {path}")
        endpoint = methods.get("GET" if method == "HEAD" else method)
        if endpoint is None:
            allow = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
            raise MethodNotAllowed(
                f"{method} is not allowed on {path}",
                headers=((b"Allow", ", ".join(allow).encode()),),
            )
        return endpoint


def build_router(backend: AdminBackend) -> AdminRouter:
    """The admin routes, bound to ``backend``."""
    router = AdminRouter()

    async def healthz(req: AdminRequest) -> AdminResponse:
        return AdminResponse.json(200, {"status": "ok"})

    async def readyz(req: AdminRequest) -> AdminResponse:
        ready, details = backend.readiness()
        body = {"status": "ready" if ready else "not_ready", **details}
        return AdminResponse.json(200 if ready else 503, body)

    async def metrics(req: AdminRequest) -> AdminResponse:
        return AdminResponse(
            200, backend.metrics_text().encode(), content_type=b"text/plain; version=0.0.4"
        )

    async def routes(req: AdminRequest) -> AdminResponse:
        return AdminResponse.json(200, {"routes": routes_document(backend.config)})

    async def reload(req: AdminRequest) -> AdminResponse:
        if req.json_object():  # no options yet: a body that asks for one is a mistake
            raise BadRequest("POST /admin/reload takes no parameters")
        result = await backend.reload()
        body = result.as_dict()
        if not result.ok:
            body["request_id"] = req.request_id
        return AdminResponse.json(result.status, body)

    router.add("GET", "/healthz", healthz, auth=False)
    router.add("GET", "/readyz", readyz, auth=False)
    router.add("GET", "/metrics", metrics)
    router.add("GET", "/admin/routes", routes)
    router.add("POST", "/admin/reload", reload)
    from fluxgate.console import mount_console  # the console imports this module

    mount_console(router, backend)
    return router


def routes_document(config: Config) -> list[dict[str, object]]:
    """The routes in force, in match-table order, with their middleware chains: what
    ``fluxctl routes explain`` says of a route, for every route. No secret: an upstream
    URL loses its user and password, a chain entry is its kind's one-line description."""
    from fluxgate.cli.audit import describe_middleware  # the CLI's view, not needed to boot

    out: list[dict[str, object]] = []
    for index, route in enumerate(config.routes):
        methods = route_methods(route)
        out.append({
            "index": index,
            "prefix": route.route,
            "upstream": route.upstream,  # the loader refuses user info in a target
            "methods": sorted(m.decode() for m in methods) if methods is not None else None,
            "public": route.public,
            "websocket": route.websocket,
            "strip_prefix": route.strip_prefix,
            "buffer_request_body": route.buffer_request_body,
            "chain": [describe_middleware(m) for m in route.middleware],
        })
    return out



# ---- the token ------------------------------------------------------------------------------


def resolve_admin_token(config_token: str | None, state_dir: str) -> tuple[str, str | None]:
    """The admin token and the file it lives in (None when it comes from the config).

    Without ``admin.token`` a random token is generated once into ``state_dir/admin.token``
    (mode 0600) and reused by later starts, so scripts and fluxctl keep working across
    restarts.
    """
    if config_token:
        return config_token, None
    path = os.path.join(state_dir, TOKEN_FILE)
    for _ in range(2):  # a second pass only if another process created the file meanwhile
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            token = secrets.token_urlsafe(32)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            return token, path
        with os.fdopen(fd) as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                os.fchmod(f.fileno(), 0o600)
                log.warning("%s was readable by others; its mode is now 0600", path)
            token = f.read().strip()
        if len(token) < 16:
            raise OSError(f"{path} holds no usable admin token; delete it to generate one")
        return token, path
    raise OSError(f"cannot create or read {path}")


# ---- the server -----------------------------------------------------------------------------


class AdminServer:
    """Serves ``router`` on a bound loopback socket with bearer-token checks."""

    def __init__(self, router: AdminRouter, token: str) -> None:
        self.router = router
        self._token = token.encode()
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None
        self._connections: set[_AdminConnection] = set()

    def set_token(self, token: str) -> None:
        """Replace the token (a reload changed admin.token)."""
        self._token = token.encode()

    def check_token(self, authorization: str | None) -> ClientError | None:
        """None when ``authorization`` carries the admin token, else the 401 to answer."""
        if authorization is None:
            return MissingCredentials("This endpoint requires an admin bearer token.")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return InvalidToken("expected: Authorization: Bearer <admin token>")
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            return InvalidToken("the admin token is not valid")
        return None

    async def start(self, sock: socket.socket) -> None:
        """Start serving on the already bound and listening ``sock``."""
        loop = asyncio.get_running_loop()
        self._sock = sock
        self._server = await loop.create_server(lambda: _AdminConnection(self), sock=sock)

    def master_only_fds(self) -> list[int]:
        """Descriptors a forked worker must drop: the listener and open admin connections."""
        fds = [self._sock.fileno()] if self._sock is not None else []
        for conn in self._connections:
            fd = conn.fileno()
            if fd >= 0:
                fds.append(fd)
        return [fd for fd in fds if fd >= 0]

    async def close(self) -> None:
        """Stop listening and close every admin connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


def _headers_too_large() -> HeadersTooLarge:
    return HeadersTooLarge(f"admin request headers are limited to {MAX_HEADER_BYTES} bytes")


class _AdminConnection(asyncio.Protocol):
    """One admin client connection: httptools parsing, in-order (pipelined) responses."""

    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._pending: collections.deque[AdminRequest | ClientError] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._broken = False  # a parse error was queued: ignore the rest of the stream
        self._paused = False
        self._in_head = True  # between requests or inside a request line/headers
        self._head_bytes = 0
        self._reset_message()

    # -- transport events --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        self._server._connections.add(self)
        self._arm_timer(REQUEST_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._cancel_timer()
        if self._worker is not None:
            self._worker.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        if self._in_head:
            # httptools buffers a header line until it ends, so the callbacks alone cannot
            # bound a never-ending line: count the raw bytes that arrive before the headers
            # complete as well.
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadRequest("protocol upgrade is not supported on the admin API"))
        except httptools.HttpParserError as exc:
            # Our callbacks raise ClientErrors (size limits); httptools chains them here.
            cause = exc.__context__
            self._fail(cause if isinstance(cause, ClientError) else BadRequest("malformed HTTP"))
            return
        if self._in_head and self._head_bytes > MAX_HEADER_BYTES:
            self._fail(_headers_too_large())

    def fileno(self) -> int:
        sock = self._transport.get_extra_info("socket") if self._transport else None
        return sock.fileno() if sock is not None else -1

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- httptools callbacks --

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_size = 0
        self._body = bytearray()
        self._duplicate_auth = False

    def on_message_begin(self) -> None:
        self._reset_message()
        self._arm_timer(REQUEST_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        if key == "authorization" and key in self._headers:
            self._duplicate_auth = True
        self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._parser.should_upgrade():
            # Checked here: llhttp would otherwise complete the message before reporting it.
            raise BadRequest("protocol upgrade is not supported on the admin API")
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"admin request bodies are limited to {MAX_BODY_BYTES} bytes")
        self._body += body

    def on_message_complete(self) -> None:
        self._cancel_timer()
        self._in_head = True
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError as exc:
            raise BadRequest("malformed request target") from exc
        if self._duplicate_auth:
            raise BadRequest("more than one Authorization header")
        self._pending.append(
            AdminRequest(
                method=self._parser.get_method().decode("ascii"),
                path=(url.path or b"").decode("latin-1"),
                query=(url.query or b"").decode("latin-1"),
                headers=self._headers,
                body=bytes(self._body),
                request_id=secrets.token_hex(8),
                keep_alive=self._parser.should_keep_alive(),
            )
        )
        self._kick()

    # -- internals --

    def _grow_head(self, n: int) -> None:
        self._head_size += n
        if self._head_size > MAX_HEADER_BYTES:
            raise _headers_too_large()

    def _fail(self, error: ClientError) -> None:
        self._broken = True
        self._cancel_timer()
        self._pending.append(error)
        self._kick()

    def _kick(self) -> None:
        if len(self._pending) >= MAX_PIPELINED and self._transport and not self._paused:
            self._transport.pause_reading()  # a pipelining client waits for us, not memory
            self._paused = True
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._respond_all())

    async def _respond_all(self) -> None:
        while self._pending and self._transport is not None:
            item = self._pending.popleft()
            if isinstance(item, ClientError):
                self._transport.write(error_response(item, secrets.token_hex(8), close=True))
                self._transport.close()
                return
            data, keep_alive = await self._dispatch(item)
            if self._transport is None:
                return
            self._transport.write(data)
            if not keep_alive:
                self._transport.close()
                return
            if self._paused and len(self._pending) < MAX_PIPELINED // 2:
                self._transport.resume_reading()
                self._paused = False
        if self._transport is not None and not self._broken:
            self._arm_timer(IDLE_TIMEOUT)

    async def _dispatch(self, req: AdminRequest) -> tuple[bytes, bool]:
        server = self._server
        head = req.method == "HEAD"
        auth_error = server.check_token(req.headers.get("authorization"))
        try:
            if auth_error is not None and server.router.requires_auth(req.path):
                raise auth_error
            endpoint = server.router.resolve(req.method, req.path)
            if endpoint.auth and auth_error is not None:
                raise auth_error
            resp = await endpoint.handler(req)
        except ClientError as exc:
            close = not req.keep_alive or exc.close_connection
            return error_response(exc, req.request_id, close=close, head_only=head), not close
        except Exception:
            log.exception("admin %s %s failed (request %s)", req.method, req.path, req.request_id)
            exc500 = InternalError("The admin request failed inside the master.")
            return error_response(exc500, req.request_id, close=True, head_only=head), False
        parts = [
            status_line(resp.status),
            b"Content-Type: %s\r\n" % resp.content_type,
            b"Content-Length: %d\r\n" % len(resp.body),
            b"X-Request-Id: %s\r\n" % req.request_id.encode(),
            b"Cache-Control: no-store\r\n",
        ]
        parts += [b"%s: %s\r\n" % (name, value) for name, value in resp.headers]
        if not req.keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if not head:
            parts.append(resp.body)
        return b"".join(parts), req.keep_alive

    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        # Request timeout or idle keep-alive: close quietly, like every HTTP server, unless a
        # response is still being produced (a reload can take longer than the timeout).
        busy = self._pending or (self._worker is not None and not self._worker.done())
        if self._transport is not None and not busy:
            self._transport.close()
