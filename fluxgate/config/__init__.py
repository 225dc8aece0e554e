"""fluxgate.yaml: the typed schema, the loader and the helpers that resolve it."""

from fluxgate.config.loader import load_config, load_config_text
from fluxgate.config.resolve import (
    UpstreamSpec,
    check_config,
    format_path,
    is_loopback,
    parse_listen,
    parse_network,
    parse_upstream_url,
    resolve_upstream,
    worker_count,
)
from fluxgate.config.units import parse_duration, parse_size
from fluxgate.errors import ConfigError

__all__ = [
    "ConfigError",
    "UpstreamSpec",
    "check_config",
    "format_path",
    "is_loopback",
    "load_config",
    "load_config_text",
    "parse_duration",
    "parse_listen",
    "parse_network",
    "parse_size",
    "parse_upstream_url",
    "resolve_upstream",
    "worker_count",
]
