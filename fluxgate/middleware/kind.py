"""What a middleware kind is: the contract its compiled middleware keeps per request, and
the record (``MiddlewareKind``) through which everything else reaches it.

A kind lives in one module, ``fluxgate/middleware/<kind>.py``: its middleware class, its
config checks and its ``KIND`` record. The loader, the config checker, the worker,
``fluxctl routes explain`` / ``auth verify`` and the ``--probe`` battery go through the
ordered registry of records (``fluxgate.middleware.KINDS``) and never name a kind. Its
config Struct stays in ``config/schema.py``, a member of the ``Middleware`` union (and of
``AuthMethod`` when it authenticates): msgspec decodes from those static unions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from fluxgate.config.parsers import Path

if TYPE_CHECKING:
    from fluxgate.cli.audit import Finding
    from fluxgate.cli.probe import Battery, Probe
    from fluxgate.config import schema
    from fluxgate.errors import ClientError
    from fluxgate.proxy.protocol import RequestState

_T = TypeVar("_T")


class Middleware(Protocol):
    """One compiled entry of a route's chain, called for every request the route takes.

    ``__call__`` returns None to let the request go on, or the refusal to answer with; an
    authentication middleware sets ``req.principal`` when it accepts. Two members are
    optional, so callers read them with ``getattr``: ``carries(req) -> bool`` (does the
    request present this method's credential at all?), which an authentication kind needs
    to be a member of ``any``, and ``drop_headers: frozenset[bytes]``, lower-case names of
    client headers dropped before proxying because this middleware writes them upstream.
    """

    def __call__(self, req: RequestState) -> ClientError | None: ...

    @classmethod
    def from_config(cls, config: Any, gateway: Any, route: Any) -> Middleware:
        """Compile one config entry, once per worker boot: everything costly (parsing
        networks, mapping shared tables, building verifiers) happens here."""
        ...


class ConfigChecker(Protocol):
    """What a kind's config checks are handed: a way to fail at a key path (the Struct's
    field path; the loader maps it back to the user's spelling and line)."""

    def check(self, ok: bool, path: Path, message: str) -> None:
        """Fail at ``path`` with ``message`` unless ``ok``."""
        ...

    def parse(self, parser: Callable[[str], _T], value: str, path: Path) -> _T:
        """``parser(value)``, its ``ValueError`` turned into a failure at ``path``."""
        ...

    def middleware(self, entry: Any, path: Path) -> None:
        """Check a middleware entry held inside another one (an ``any`` member)."""
        ...


def _no_checks(checker: ConfigChecker, entry: Any, path: Path) -> None:
    return None


def _no_scopes(entry: Any) -> Sequence[str]:
    return ()


def _no_findings(config: schema.Config, entry: Any) -> list[Finding]:
    return []


@dataclass(frozen=True)
class MiddlewareKind:
    """One middleware kind, as the code outside its module sees it."""

    name: str  # the YAML key, which is also the Struct's tag
    struct: type[msgspec.Struct]  # its member of schema.Middleware
    build: Callable[[Any, Any, Any], Middleware]  # from_config(config, gateway, route)
    describe: Callable[[Any], str]  # one line for explain / auth verify; never shows a secret
    # The field a value that is not a mapping fills: `- ip_allow: [10.0.0.0/8]` means
    # `{cidrs: [10.0.0.0/8]}` (a single string becomes a one-item list for a list field).
    shorthand: str | None = None
    # The shorthand list holds middleware entries of their own (`- any: [jwt: {...}]`),
    # which must be authentication kinds.
    nested: bool = False
    # It identifies the caller: it satisfies zero trust and a quota by subject, and (unless
    # nested itself) it may be a member of `any`.
    authenticates: bool = False
    # The entry's own checks, beyond what its Struct's types say.
    check: Callable[[ConfigChecker, Any, Path], None] = _no_checks
    # Checks that depend on the chain: the bool says an authenticating entry comes before.
    # They run after every entry of the route passed its own checks.
    check_in_chain: Callable[[ConfigChecker, Any, Path, bool], None] | None = None
    scopes: Callable[[Any], Sequence[str]] = _no_scopes  # what an entry requires of a caller
    findings: Callable[[schema.Config, Any], list[Finding]] = _no_findings  # auth verify
    # The hostile --probe battery for a route taking this method; None: the kind has none.
    probes: Callable[[Battery], list[Probe]] | None = None

    def __post_init__(self) -> None:
        config = self.struct.__struct_config__
        if config.tag != self.name:
            raise TypeError(f"kind {self.name!r}: its Struct's tag is {config.tag!r}")
        fields = {f.encode_name for f in msgspec.structs.fields(self.struct)}
        if self.shorthand is not None and self.shorthand not in fields:
            raise TypeError(f"kind {self.name!r}: no field {self.shorthand!r} to fill")
        if self.nested and self.shorthand is None:
            raise TypeError(f"kind {self.name!r}: nested entries need a shorthand field")

    def members(self, entry: Any) -> list[Any]:
        """The middleware entries ``entry`` holds (a nested kind's), else none."""
        return list(getattr(entry, self.shorthand)) if self.nested and self.shorthand else []


class _Lazy:
    """``module:function``, imported at its first call."""

    __slots__ = ("target", "_function")

    def __init__(self, target: str) -> None:
        self.target = target
        self._function: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        function = self._function
        if function is None:
            module, _, name = self.target.partition(":")
            function = self._function = getattr(importlib.import_module(module), name)
        return function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


def lazy(target: str) -> Callable[..., Any]:
    """A callable standing for ``"package.module:function"``, imported when first called.

    Audit findings and probe batteries live in ``fluxgate.cli``, which imports the
    middleware modules: naming them directly in a ``KIND`` record would be an import cycle,
    and would load the command-line tools into every worker.
    """
    return _Lazy(target)
