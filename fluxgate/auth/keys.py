"""API key text, minting, and the gateway's signing secret.

A key reads ``fg_`` + base64url(id[9] ‖ secret[24] ‖ tag[12]): 63 characters from the URL
alphabet, so it needs no escaping in a header or a query string, and the ``fg_`` prefix lets
secret scanners find a leaked one. The 12-character id (characters 3–15) names the key in
``fluxctl`` and logs; the secret never leaves the minting call. ``mac`` is HMAC-SHA256 under
the signing secret of ``"fgk1" ‖ id ‖ secret``: its first 12 bytes are the tag, which
``_core`` checks before any lookup, and all 32 are the digest kept at rest. The rules live in
``fluxgate/_keys.pxi``; ``KEY_FORMAT`` is what both sides share.

The signing secret is ``api_keys.signing_secret`` from the config (``${ENV}`` works there), else
``state_dir/keys.secret``, generated once with mode 0600. Every key is bound to it: replacing
the secret invalidates every key issued under the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass

from fluxgate._core import KEY_FORMAT, b64url_decode, b64url_encode
from fluxgate.config.parsers import MIN_SECRET_CHARS
from fluxgate.errors import ConfigError

log = logging.getLogger("fluxgate.keys")

PREFIX: bytes = KEY_FORMAT["prefix"]
ID_BYTES: int = KEY_FORMAT["id_bytes"]
SECRET_BYTES: int = KEY_FORMAT["secret_bytes"]
TAG_BYTES: int = KEY_FORMAT["tag_bytes"]
TEXT_LEN: int = KEY_FORMAT["text_len"]
ID_CHARS = ID_BYTES * 4 // 3  # 12
SECRET_FILE = "keys.secret"

# A key's name is the consumer (quotas belong to it); it is sent upstream in
# X-FluxGate-Subject, so it is a plain token.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{12}")


@dataclass(frozen=True)
class MintedKey:
    """A new key: ``text`` is shown once and never stored; ``digest`` is what is kept."""

    key_id: str
    text: str
    digest: bytes


def key_mac(signing_key: bytes, raw_id: bytes, secret: bytes) -> bytes:
    """HMAC-SHA256 of a key under the signing key (the same function as ``_core``'s)."""
    return hmac.digest(signing_key, KEY_FORMAT["mac_domain"] + raw_id + secret, hashlib.sha256)


def mint_key(signing_key: bytes) -> MintedKey:
    """A fresh random key (id and secret from ``os.urandom``) bound to ``signing_key``.

    Drawn again until it has no ``-`` or ``_`` after the prefix (7 draws on average), so a
    key is one word to a double click and to ``fg_[A-Za-z0-9]{60}``, and an id never starts
    like a command-line option. The secret keeps ~189 of its 192 random bits.
    """
    while True:
        raw_id = secrets.token_bytes(ID_BYTES)
        secret = secrets.token_bytes(SECRET_BYTES)
        mac = key_mac(signing_key, raw_id, secret)
        body = b64url_encode(raw_id + secret + mac[:TAG_BYTES])
        if body.isalnum():
            return MintedKey(body[:ID_CHARS].decode(), (PREFIX + body).decode(), mac)


def key_id_of(text: str) -> str | None:
    """The id part of something shaped like a key, else None (no verification)."""
    if len(text) == TEXT_LEN and text.startswith(PREFIX.decode()):
        key_id = text[3 : 3 + ID_CHARS]
        if _KEY_ID.fullmatch(key_id):
            return key_id
    return None


def is_key_id(text: str) -> bool:
    """True for a 12-character key id (as ``fluxctl keys list`` shows it)."""
    if not _KEY_ID.fullmatch(text):
        return False
    try:
        b64url_decode(text.encode())
    except ValueError:
        return False
    return True


def check_name(name: str) -> str:
    """A key name: 1–64 of letters, digits, ``.``, ``_``, ``:`` and ``-``; ValueError if not."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid key name {name!r}: use 1-64 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return name


# ---- the signing secret ----------------------------------------------------------------------


def signing_key_from_config(config_secret: str | None) -> bytes | None:
    """The key given by ``api_keys.signing_secret`` (None when absent); ConfigError if weak."""
    if config_secret is None or not config_secret.strip():
        return None
    if len(config_secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"must be at least {MIN_SECRET_CHARS} characters (e.g. the output of "
            "`openssl rand -base64 32`)",
            "api_keys.signing_secret",
        )
    return config_secret.encode()


def load_signing_key(config_secret: str | None, state_dir: str, *, create: bool = True) -> bytes:
    """The signing key: from the config, else ``state_dir/keys.secret`` (created once, mode
    0600, when ``create``). Raises ConfigError or OSError."""
    configured = signing_key_from_config(config_secret)
    if configured is not None:
        return configured
    path = os.path.join(state_dir, SECRET_FILE)
    for _ in range(2):  # a second pass only when another process created the file meanwhile
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise OSError(f"{path} does not exist (no key has been issued yet)") from None
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            secret = b64url_encode(secrets.token_bytes(32))
            with os.fdopen(fd, "wb") as f:
                f.write(secret + b"\n")
                f.flush()
                os.fsync(f.fileno())
            log.info("generated the API key signing secret in %s", path)
            return secret
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                os.fchmod(f.fileno(), 0o600)
                log.warning("%s was readable by others; its mode is now 0600", path)
            secret = f.read().strip()
        if len(secret) < MIN_SECRET_CHARS:
            raise OSError(f"{path} holds no usable signing secret; restore it from a backup")
        return secret
    raise OSError(f"cannot create or read {path}")
