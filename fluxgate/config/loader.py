"""fluxgate.yaml → PyYAML events → plain data → msgspec Structs, with precise errors.

The stages, each raising ``ConfigError`` with the key path as the user wrote it and, where
known, the line:

1. ``_Builder`` turns PyYAML's event stream (the C parser when available) into dicts, lists
   and scalars, recording the line of every key and list item, and substitutes ``${VAR}``
   in string scalars — after parsing, so a variable's value can never inject YAML structure.
2. ``_rewrite_middleware`` turns ``- ip_allow: [...]`` into the tagged form msgspec expects,
   as each kind's record in the middleware registry says (its shorthand field, whether it
   nests entries), remembering how the new paths map back to what the user wrote.
3. ``_Prepare`` walks the data along the Struct annotations: unknown keys, durations and
   sizes (found by the ``unit`` in their ``Meta``), values substituted from the environment
   into non-string fields.
4. ``msgspec.convert`` checks types and constraints; its error path is translated back.
5. ``resolve.check_config`` checks what types cannot say: addresses, CIDRs, upstreams,
   routes, zero trust.

Stages 2 to 5 repeat until they pass, each time without the key the last error named, so
every independent error is reported (``ConfigErrors``), not only the first; an error in
the YAML itself (stage 1) stops there, but for a ``${VAR}`` that cannot be
substituted, which only takes its key out. Stage 3 also accepts ``clock_skew_tolerance`` for
``clockSkewTolerance``, the one key spelled in camelCase.
"""

from __future__ import annotations

import copy
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import msgspec
import yaml

from fluxgate.config import schema
from fluxgate.config.parsers import Path, did_you_mean, format_path
from fluxgate.config.resolve import check_config
from fluxgate.config.units import parse_duration, parse_size
from fluxgate.errors import ConfigError

if TYPE_CHECKING:
    from fluxgate.middleware.kind import MiddlewareKind

__all__ = ["ConfigErrors", "load_config", "load_config_text"]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALARS = yaml.constructor.SafeConstructor()  # PyYAML's own int/float/bool rules (YAML 1.1)
_TAG = "tag:yaml.org,2002:"
_MAX_DEPTH = 32  # a config is ~6 levels deep; this stops a "[[[[..." bomb early
# Other spellings a key is accepted under: the one camelCase key also in snake_case, as
# every other key is written. Both spellings in one mapping are an error.
_KEY_ALIASES = {"clock_skew_tolerance": "clockSkewTolerance"}


def __getattr__(name: str) -> Any:
    # MIDDLEWARE_FORMS: how each kind is written in YAML, which the middleware registry
    # says. Looked up on use: importing the registry imports every middleware implementation.
    if name == "MIDDLEWARE_FORMS":
        return _kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _kinds() -> dict[str, MiddlewareKind]:
    """The registry of middleware kinds (how each is written in YAML: shorthand, nested)."""
    from fluxgate.middleware import KINDS

    return KINDS


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> schema.Config:
    """Read, parse and validate the config file at ``path``.

    ``env`` replaces ``os.environ`` for ``${VAR}`` substitution. Raises ``ConfigError`` only.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError("the config file is not valid UTF-8", line=line) from None
    return load_config_text(text, source=os.fspath(path), env=env)


def load_config_text(
    text: str, source: str = "<string>", *, env: Mapping[str, str] | None = None
) -> schema.Config:
    """Parse and validate config ``text``; ``source`` names it in the error's note.

    ``env`` replaces ``os.environ`` for ``${VAR}`` substitution. Raises ``ConfigError`` only
    (YAML syntax errors included), its message naming the key path and line.
    """
    try:
        doc = _Document()
        builder = _Builder(doc, os.environ if env is None else env)
        data = builder.build(text)
        if data is None:  # an empty file: every default, which still lacks routes
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"the config must be a mapping of keys, got {_describe(data)}", line=doc.root_line
            )
        return _validate_all(data, doc, builder.env_errors)
    except ConfigError as exc:
        exc.add_note(f"while loading {source}")
        raise


class ConfigErrors(ConfigError):
    """Several independent errors in one config; ``errors`` holds each, in line order.

    Its message is theirs, one line each; ``path`` and ``line`` are those of the first one
    found (what a single ``ConfigError`` would have said)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        self.errors = sorted(errors, key=lambda e: (e.line is None, e.line or 0))
        Exception.__init__(self, "\n".join(str(e) for e in self.errors))
        self.path, self.line = first.path, first.line


# A config with more wrong than this is reported in part: enough to fix a batch.
_MAX_ERRORS = 50


def _validate_all(
    data: dict[str, object], doc: _Document, found: list[ConfigError]
) -> schema.Config:
    """Validate ``data``, reporting every independent error rather than the first.

    Each pass validates a copy; on an error, the key it points at (the nearest mapping key
    on its path) is taken out of the data and the pass repeats, until one passes. An error
    on or around what was taken out (the route whose upstream was removed now lacks one) is
    a consequence, not news, and is not reported. ``found``: errors already known (a
    ``${VAR}`` that could not be substituted), whose keys are taken out first."""
    errors: list[ConfigError] = list(found)
    pruned: list[Path] = []
    for exc in found:
        where = exc.user_path  # type: ignore[attr-defined]
        if _prune(data, where):
            pruned.append(where)
    for _ in range(_MAX_ERRORS * 4):
        try:
            config = _validate(copy.deepcopy(data), doc)
        except ConfigError as exc:
            where = getattr(exc, "user_path", None)
            news = where is None or not any(_related(where, p) for p in pruned)
            if news:
                errors.append(exc)
            if where is None or not _prune(data, where):
                break  # nothing to take out: what follows would depend on this
            pruned += [where, *_dependents(data, where, str(exc))]
            if len(errors) >= _MAX_ERRORS:
                break
        else:
            if not errors:
                return config
            break
    if len(errors) == 1:
        raise errors[0]
    raise ConfigErrors(errors)


_SUGGESTED = re.compile(r"did you mean '([^']+)'")


def _dependents(data: dict[str, object], where: Path, message: str) -> list[Path]:
    """Where errors that follow from the one at ``where`` will show, besides ``where``
    itself: the key a misspelt key was meant to be (``rotues``: then ``routes`` is
    missing), and the routes naming an upstream that had to be taken out."""
    found: list[Path] = []
    suggested = _SUGGESTED.search(message)
    if suggested and suggested.group(1) not in _lookup(data, where[:-1]):
        found.append((*where[:-1], suggested.group(1)))
    upstreams = data.get("upstreams")
    if len(where) >= 2 and where[0] == "upstreams" and isinstance(upstreams, dict) and (
        where[1] not in upstreams
    ):
        routes = data.get("routes")
        for i, route in enumerate(routes if isinstance(routes, list) else []):
            if isinstance(route, dict) and route.get("upstream") == where[1]:
                found.append(("routes", i, "upstream"))
    return found


def _lookup(data: object, path: Path) -> object:
    """The value at ``path`` in ``data``, or an empty dict when there is none."""
    for step in path:
        if isinstance(data, dict) and step in data:
            data = data[step]
        elif isinstance(data, list) and isinstance(step, int) and 0 <= step < len(data):
            data = data[step]
        else:
            return {}
    return data if isinstance(data, dict) else {}


def _validate(data: dict[str, object], doc: _Document) -> schema.Config:
    """Stages 2 to 5 on ``data`` (modified in place); the first error is raised."""
    doc.moves.clear()  # the rewrite records them afresh for this copy of the data
    _rewrite_middleware(data, doc)
    data = _Prepare(doc).value(data, schema.Config, ())
    try:
        config = msgspec.convert(data, schema.Config)
    except msgspec.ValidationError as exc:
        path, message = _translate(str(exc), data)
        raise doc.error(path, message) from None
    return check_config(config, doc.error)


def _prune(data: object, where: Path) -> bool:
    """Take out the deepest mapping key on ``where`` that ``data`` holds; False if none.

    A route or an upstream is not taken out but replaced by a stand-in that passes every
    check: removing a route would shift the indices (and lines) of the routes after it, and
    removing an upstream would make every route that names it an error."""
    containers: list[tuple[dict[str, object] | list[object], str | int]] = []
    node = data
    for step in where:
        if isinstance(node, dict) and step in node:
            containers.append((node, step))
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            containers.append((node, step))
        else:
            break
        node = node[step]  # type: ignore[index]
    for depth in range(len(containers) - 1, -1, -1):
        parent, step = containers[depth]
        stand_in = _stand_in(where[: depth + 1])
        if stand_in is not None and parent[step] != stand_in:  # type: ignore[index]
            parent[step] = stand_in  # type: ignore[index]
            return True
        if isinstance(parent, dict):
            del parent[step]  # type: ignore[arg-type]
            return True
    return False


def _stand_in(path: Path) -> dict[str, object] | None:
    """What replaces the route or upstream at ``path`` once it is known to be wrong."""
    if len(path) == 2 and path[0] == "routes" and isinstance(path[1], int):
        return {"route": f"/fluxgate-checked-{path[1]}", "upstream": "http://127.0.0.1:1",
                "public": True}
    if len(path) == 2 and path[0] == "upstreams":
        return {"targets": ["http://127.0.0.1:1"]}
    return None


def _related(a: Path, b: Path) -> bool:
    """One path lies on the other (the same key, an ancestor, or a descendant)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


class _Document:
    """Lines of the user's keys, and how rewritten (internal) paths map back to them."""

    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}
        self.moves: dict[Path, Path] = {}  # internal path prefix → the user's path prefix
        self.root_line: int | None = None

    def user_path(self, path: Path) -> Path:
        for n in range(len(path), 0, -1):  # longest prefix wins
            moved = self.moves.get(path[:n])
            if moved is not None:
                return moved + path[n:]
        return path

    def error(self, path: Path, message: str) -> ConfigError:
        """The error at internal ``path``, said at the user's path and line; it keeps that
        path (``user_path``) so the loader can take the key out and look for more."""
        user = self.user_path(path)
        error = ConfigError(message, format_path(user))
        for n in range(len(user), -1, -1):  # a missing key reports its parent's line
            line = self.lines.get(user[:n])
            if line is not None:
                error = ConfigError(message, format_path(user), line)
                break
        error.user_path = user
        return error


class _EnvText(str):
    """A string that came out of ``${VAR}`` substitution: it may fill an int/bool field."""

    __slots__ = ()


# "$${" is a literal "${"; "${NAME}" and "${NAME:-default}" substitute; any other "${" is an
# error. A default cannot contain "$" or "}", so nesting is refused rather than half-parsed.
_ENV_REF = re.compile(r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<default>:-[^}$]*)?\}|\$\{")


class _Builder:
    """PyYAML events → dicts/lists/scalars, with lines, ${VAR} substitution and safety checks.

    Aliases are refused outright rather than expansion-limited: a config never needs
    them, and refusing kills "billion laughs" before anything is expanded. Merge keys
    (``<<``) go with them. Duplicate keys are errors (PyYAML would keep the last silently).
    """

    def __init__(self, doc: _Document, env: Mapping[str, str]) -> None:
        self.doc = doc
        self.env = env
        # A ${VAR} that cannot be substituted is an error of its key alone: the reading
        # goes on, so the rest of the config is checked too.
        self.env_errors: list[ConfigError] = []
        self.loader: Any = None

    def build(self, text: str) -> object:
        self.loader = _Loader(text)
        try:
            self._expect(yaml.StreamStartEvent)
            if self.loader.check_event(yaml.StreamEndEvent):
                return None
            self._expect(yaml.DocumentStartEvent)
            self.doc.root_line = self.loader.peek_event().start_mark.line + 1
            value = self._node((), 0)
            self._expect(yaml.DocumentEndEvent)
            if not self.loader.check_event(yaml.StreamEndEvent):
                extra = self.loader.peek_event()
                raise ConfigError(
                    "only one YAML document is allowed ('---' starts another)",
                    line=extra.start_mark.line + 1,
                )
            return value
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "syntax error"
            line = mark.line + 1 if mark else None
            context = ""
            if exc.context and exc.problem:  # "while parsing a flow sequence", and where
                started = exc.context_mark.line + 1 if exc.context_mark else line
                context = f" ({exc.context}" + (
                    f" started on line {started})" if started != line else ")"
                )
            source_line = (
                text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
            )
            if "::" in source_line:  # '[::1]:80' opens a flow list; '::1' cannot start one's item
                context += '; quote IPv6 addresses, e.g. "::1/128" or "[::1]:8080"'
            raise ConfigError(f"invalid YAML: {problem}{context}", line=line) from None
        except yaml.YAMLError as exc:  # ReaderError: bad characters, no line mark
            position = getattr(exc, "position", None)
            line = text[:position].count("\n") + 1 if isinstance(position, int) else None
            reason = getattr(exc, "reason", None) or "unreadable input"
            raise ConfigError(f"invalid YAML: {reason}", line=line) from None
        finally:
            self.loader.dispose()

    def _expect(self, kind: type) -> Any:
        event = self.loader.get_event()
        if not isinstance(event, kind):  # pragma: no cover - the parser guarantees the order
            raise ConfigError(f"invalid YAML: unexpected {type(event).__name__}")
        return event

    def _node(self, path: Path, depth: int) -> object:
        event = self.loader.get_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"YAML aliases are not supported (*{event.anchor}); repeat the value instead",
                format_path(path),
                line,
            )
        if depth > _MAX_DEPTH:
            raise ConfigError(f"nested deeper than {_MAX_DEPTH} levels", format_path(path), line)
        if isinstance(event, yaml.ScalarEvent):
            return self._scalar(event, path)
        tag = getattr(event, "tag", None)
        if isinstance(event, yaml.SequenceStartEvent):
            if tag not in (None, "!", _TAG + "seq"):
                raise ConfigError(f"unsupported YAML tag {tag}", format_path(path), line)
            items: list[object] = []
            while not self.loader.check_event(yaml.SequenceEndEvent):
                item_path = (*path, len(items))
                self.doc.lines[item_path] = self.loader.peek_event().start_mark.line + 1
                items.append(self._node(item_path, depth + 1))
            self.loader.get_event()
            return items
        if tag not in (None, "!", _TAG + "map"):
            raise ConfigError(f"unsupported YAML tag {tag}", format_path(path), line)
        mapping: dict[str, object] = {}
        while not self.loader.check_event(yaml.MappingEndEvent):
            key_event = self.loader.get_event()
            key_line = key_event.start_mark.line + 1
            if not isinstance(key_event, yaml.ScalarEvent):
                what = "an alias" if isinstance(key_event, yaml.AliasEvent) else "a collection"
                raise ConfigError(
                    f"a key must be a plain string, not {what}", format_path(path), key_line
                )
            # The key as written: "on"/"yes"/"1" are names here, not YAML 1.1 booleans or ints.
            key = key_event.value
            if self._resolve(key_event) == _TAG + "merge":
                raise ConfigError(
                    "YAML merge keys (<<) are not supported", format_path(path), key_line
                )
            key_path = (*path, key)
            if key in mapping:
                first = self.doc.lines[key_path]
                raise ConfigError(
                    f"duplicate key (first set on line {first})", format_path(key_path), key_line
                )
            self.doc.lines[key_path] = key_line
            mapping[key] = self._node(key_path, depth + 1)
        self.loader.get_event()
        return mapping

    def _resolve(self, event: yaml.ScalarEvent) -> str:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        return tag

    def _scalar(self, event: yaml.ScalarEvent, path: Path) -> object:
        tag = self._resolve(event)
        if tag == _TAG + "str":
            return self._substitute(event.value, path)
        if tag == _TAG + "timestamp":  # no field holds a date; keep "2024-01-01" as written
            return event.value
        kind = tag.removeprefix(_TAG)
        if tag.startswith(_TAG) and kind in ("null", "bool", "int", "float"):
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark)
            try:
                return getattr(_SCALARS, f"construct_yaml_{kind}")(node)
            except (ValueError, yaml.YAMLError):
                raise ConfigError(
                    f"invalid {kind} {event.value!r}", format_path(path), event.start_mark.line + 1
                ) from None
        raise ConfigError(
            f"unsupported YAML tag {tag}", format_path(path), event.start_mark.line + 1
        )

    def _substitute(self, text: str, path: Path) -> str:
        if "$" not in text:
            return text
        used = False

        def replace(match: re.Match[str]) -> str:
            nonlocal used
            if match.group(0) == "$${":
                return "${"
            name = match.group("name")
            if name is None:
                raise self.doc.error(
                    path,
                    "malformed variable reference: write ${NAME} or "
                    "${NAME:-default} (and $${ for a literal ${)",
                )
            used = True
            value = self.env.get(name)
            default = match.group("default")
            if default is not None:  # POSIX ':-': the default also covers set-but-empty
                return value if value else default[2:]
            if value is None:
                raise self.doc.error(
                    path,
                    f"environment variable {name} is not set "
                    f"(write ${{{name}:-default}} to give a default)",
                )
            return value

        try:
            result = _ENV_REF.sub(replace, text)
        except ConfigError as exc:
            self.env_errors.append(exc)
            return _EnvText("")  # never used: the loader takes the key out first
        return _EnvText(result) if used else result


def _rewrite_middleware(data: dict[str, object], doc: _Document) -> None:
    """Rewrite each ``routes[i].middleware[j]`` one-key mapping into its tagged form."""
    routes = data.get("routes")
    if not isinstance(routes, list):
        return  # msgspec reports the wrong type
    for i, route in enumerate(routes):
        chain = route.get("middleware") if isinstance(route, dict) else None
        if not isinstance(chain, list):
            continue
        for j, entry in enumerate(chain):
            chain[j] = _rewrite_entry(entry, ("routes", i, "middleware", j), doc)


def _rewrite_entry(entry: object, path: Path, doc: _Document) -> object:
    if not isinstance(entry, dict):
        raise doc.error(
            path,
            "a middleware entry is a one-key mapping such as "
            f"'- ip_allow: [10.0.0.0/8]', got {_describe(entry)}",
        )
    if len(entry) != 1:
        if not entry:
            raise doc.error(path, "empty middleware entry")
        hint = ""
        if any(value is None for value in entry.values()):
            hint = "; are the options indented under the middleware name?"
        raise doc.error(
            path,
            f"a middleware entry has exactly one key, got {len(entry)} ({', '.join(entry)}){hint}",
        )
    ((kind, value),) = entry.items()
    kind_path = (*doc.user_path(path), kind)  # an `any` member: routes[i]...any[k].jwt
    if kind not in schema.KNOWN_KINDS:
        raise doc.error(
            kind_path,
            f"unknown middleware {kind!r}{did_you_mean(kind, schema.KNOWN_KINDS)}"
            f"; known kinds: {', '.join(sorted(schema.KNOWN_KINDS))}",
        )
    form = _kinds().get(kind)
    if form is None:
        raise doc.error(kind_path, f"middleware {kind!r} is not available yet in this version")
    tag_field = form.struct.__struct_config__.tag_field or "kind"
    # Whatever lies under the entry's internal path is the user's path under '<kind>'.
    doc.moves[path] = kind_path
    if isinstance(value, dict):
        if tag_field in value:
            raise doc.error((*path, tag_field), "unknown key")
        if form.nested and form.shorthand in value:
            members = value[form.shorthand]
            value = {**value, form.shorthand: _rewrite_members(members, (*path, form.shorthand), doc)}
        return {tag_field: kind, **value}
    if form.shorthand is None:
        raise doc.error(kind_path, f"middleware {kind!r} takes a mapping of options")
    field_type = _struct_fields(form.struct)[form.shorthand].type
    if isinstance(value, str) and typing.get_origin(_bare(field_type)) is list:
        value = [value]
    doc.moves[(*path, form.shorthand)] = kind_path
    if form.nested:
        value = _rewrite_members(value, (*path, form.shorthand), doc)
    return {tag_field: kind, form.shorthand: value}


def _rewrite_members(members: object, path: Path, doc: _Document) -> object:
    """The entries of ``- any: [...]``: each an authentication method's one-key mapping."""
    if not isinstance(members, list):
        return members  # msgspec reports the wrong type
    kinds = _kinds()
    methods = sorted(name for name, form in kinds.items() if form.authenticates and not form.nested)
    out = []
    for k, member in enumerate(members):
        if isinstance(member, dict) and len(member) == 1:
            (kind,) = member
            form = kinds.get(kind)  # unknown and planned kinds get _rewrite_entry's answer
            if form is not None and (not form.authenticates or form.nested):
                raise doc.error(
                    (*path, k, kind),
                    f"'any' combines authentication methods ({', '.join(methods)}); "
                    f"{kind!r} is not one",
                )
        out.append(_rewrite_entry(member, (*path, k), doc))
    return out


class _Prepare:
    """Walk data along the Struct annotations, before msgspec sees it.

    Refuses unknown keys (with a suggestion), turns durations and sizes into numbers, and
    gives substituted ``${VAR}`` strings the type of the field they fill.
    """

    def __init__(self, doc: _Document) -> None:
        self.doc = doc

    def value(self, value: object, tp: Any, path: Path) -> object:
        unit = _unit(tp)
        if unit is not None and value is not None:
            try:
                return parse_duration(value) if unit == "duration" else parse_size(value)
            except ValueError as exc:
                raise self.doc.error(path, str(exc)) from None
        tp = _bare(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            return self.struct(value, tp, path)
        if origin is list and isinstance(value, list):
            (item_type,) = typing.get_args(tp)
            return [self.value(item, item_type, (*path, i)) for i, item in enumerate(value)]
        if origin is dict and isinstance(value, dict):
            _, value_type = typing.get_args(tp)
            return {k: self.value(v, value_type, (*path, k)) for k, v in value.items()}
        if origin in (Union, types.UnionType):
            return self.union(value, typing.get_args(tp), path)
        if isinstance(value, _EnvText):
            return self.from_env(value, (tp,), path)
        return value

    def struct(self, value: object, cls: type[msgspec.Struct], path: Path) -> object:
        if not isinstance(value, dict):
            return value  # msgspec: "expected a mapping"
        fields = _struct_fields(cls)
        tag_field = cls.__struct_config__.tag_field
        out: dict[str, object] = {}
        for key, item in value.items():
            if key == tag_field:
                out[key] = item
                continue
            name = key
            if key not in fields and _KEY_ALIASES.get(key) in fields:
                name = _KEY_ALIASES[key]
                if name in value:
                    raise self.doc.error(
                        (*path, key), f"{name} and {key} are one setting: give only one"
                    )
                # Later errors about the field name the key as the user wrote it.
                self.doc.moves[(*path, name)] = self.doc.user_path((*path, key))
            field = fields.get(name)
            if field is None:
                hint = did_you_mean(key, fields) or f"; valid keys: {', '.join(fields)}"
                raise self.doc.error((*path, key), f"unknown key{hint}")
            out[name] = self.value(item, field.type, (*path, key))
        return out

    def union(self, value: object, members: tuple[Any, ...], path: Path) -> object:
        options = [m for m in members if m is not type(None)]
        if value is None and len(options) < len(members):
            return None
        structs = [
            m for m in map(_bare, options) if isinstance(m, type) and issubclass(m, msgspec.Struct)
        ]
        if structs and isinstance(value, dict):
            for cls in structs:  # a tagged union: the tag picks the member
                config = cls.__struct_config__
                if len(structs) == 1 or value.get(config.tag_field) == config.tag:
                    return self.struct(value, cls, path)
            return value
        for member in options:
            if _unit(member) is not None and value is not None:
                return self.value(value, member, path)
        if isinstance(value, _EnvText):
            return self.from_env(value, options, path)
        literals = [
            v for m in options if typing.get_origin(m) is Literal for v in typing.get_args(m)
        ]
        if literals and isinstance(value, str) and value not in literals:
            expected = " or ".join(map(_describe_type, options))
            raise self.doc.error(path, f"expected {expected}, got {value!r}")
        return value

    def from_env(self, text: _EnvText, options: list[Any] | tuple[Any, ...], path: Path) -> object:
        # The substituted value is not echoed: it may be a secret in the wrong place.
        bare = [_bare(m) for m in options]
        stripped = text.strip()
        if any(str(text) in typing.get_args(m) for m in bare if typing.get_origin(m) is Literal):
            return str(text)
        if int in bare and re.fullmatch(r"[+-]?[0-9]+", stripped):
            return int(stripped)
        if float in bare and re.fullmatch(r"[+-]?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?", stripped):
            return float(stripped)
        if bool in bare and stripped.lower() in _SCALARS.bool_values:
            return _SCALARS.bool_values[stripped.lower()]
        if str in bare:
            return str(text)
        wanted = " or ".join(_describe_type(m) for m in options)
        raise self.doc.error(
            path, f"expected {wanted}; the value substituted from the environment is not one"
        )


def _unit(tp: Any) -> str | None:
    """The ``unit`` ("duration"/"size") a schema type declares in its ``Meta(extra=...)``."""
    if typing.get_origin(tp) is Annotated:
        for meta in tp.__metadata__:
            if isinstance(meta, msgspec.Meta) and meta.extra:
                unit = meta.extra.get("unit")
                if unit is not None:
                    return unit
    return None


def _bare(tp: Any) -> Any:
    """``Annotated[X, ...]`` → ``X``."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


_FIELDS: dict[type, dict[str, msgspec.structs.FieldInfo]] = {}


def _struct_fields(cls: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    """Fields by the name written in YAML (``encode_name``, so renames are honoured)."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    return fields


_MSGSPEC_AT = re.compile(r"(?P<message>.*) - at `\$(?P<path>.*)`", re.DOTALL)
_MSGSPEC_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_TYPE_NAMES = {
    "array": "a list",
    "object": "a mapping",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true/false)",
    "null": "null",
}


def _translate(error: str, data: object) -> tuple[Path, str]:
    """Turn msgspec's ``message - at `$.a[0].b``` into a path and a message for users."""
    match = _MSGSPEC_AT.fullmatch(error)
    if match is None:
        return (), error
    path = _locate(data, match.group("path"))
    message = match.group("message")
    if found := re.fullmatch(r"Object contains unknown field `(.+)`", message):
        return (*path, found.group(1)), "unknown key"
    if found := re.fullmatch(r"Object missing required field `(.+)`", message):
        return path, f"missing required key {found.group(1)!r}"
    if found := re.fullmatch(r"Expected `(.+?)`, got `(.+?)`", message):
        expected = " or ".join(_TYPE_NAMES.get(t, f"`{t}`") for t in found.group(1).split(" | "))
        return path, f"expected {expected}, got {_TYPE_NAMES.get(found.group(2), found.group(2))}"
    if found := re.fullmatch(r"Expected `array` of length >= (\d+)", message):
        count = int(found.group(1))
        return path, "must not be empty" if count == 1 else f"needs at least {count} items"
    if found := re.fullmatch(r"Expected `(int|float)` (>=|<=|>|<) (\S+)", message):
        return path, f"must be {found.group(2)} {found.group(3).removesuffix('.0')}"
    return path, message[:1].lower() + message[1:]


def _locate(data: object, raw: str) -> Path:
    """Rebuild the path of a msgspec error; ``[...]`` (a dict key msgspec does not print) is
    found as the first entry, in document order, that fails on its own — msgspec stops at
    the first failure and walks dicts in order, so it is the one it reported."""
    path: list[str | int] = []
    value: object = data
    tp: Any = schema.Config
    for name, index in _MSGSPEC_SEGMENT.findall(raw):
        tp = _pick(_bare(tp), value)
        if name:
            field = _struct_fields(tp).get(name) if isinstance(tp, type) else None
            tp = field.type if field else Any
            key: str | int = name
        elif index == "...":
            value_type = typing.get_args(tp)[1] if typing.get_origin(tp) is dict else Any
            key = (
                next((k for k, v in value.items() if not _converts(v, value_type)), "...")
                if isinstance(value, dict)
                else "..."
            )
            tp = value_type
        else:
            key = int(index)
            tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else Any
        path.append(key)
        value = (
            value.get(key)
            if isinstance(value, dict)
            else (
                value[key]
                if isinstance(value, list) and isinstance(key, int) and key < len(value)
                else None
            )
        )
    return tuple(path)


def _pick(tp: Any, value: object) -> Any:
    """The member of a tagged union that ``value`` selects (other types pass through)."""
    if typing.get_origin(tp) in (Union, types.UnionType) and isinstance(value, dict):
        for member in map(_bare, typing.get_args(tp)):
            if isinstance(member, type) and issubclass(member, msgspec.Struct):
                config = member.__struct_config__
                if config.tag is None or value.get(config.tag_field) == config.tag:
                    return member
    return tp


def _converts(value: object, tp: Any) -> bool:
    try:
        msgspec.convert(value, tp)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return "a list" if isinstance(value, list) else "a mapping"


def _describe_type(tp: Any) -> str:
    bare = _bare(tp)
    if typing.get_origin(bare) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(bare))
    names = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}
    return names.get(bare, getattr(bare, "__name__", str(bare)))
