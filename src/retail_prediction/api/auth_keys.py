"""Static bearer keys (AUTH_MODE=keys) from a mounted file, re-read when it changes.

The file (a Kubernetes Secret's key, mounted read-only) holds one key a line, `name:key`; blank lines and
lines starting with `#` are skipped. The name (letters, digits, `.`, `_`, `-`, at most 64) is the caller's
identity in the access log and the metrics; the key is at least 16 printable characters, no spaces. Several
lines at once let keys be rotated: add the new key, move the callers, remove the old one.

Only the keys' SHA-256 digests are kept, and a presented key's digest is compared with every one of them by
`hmac.compare_digest`, whatever matched: the time taken does not depend on how much of a key was right. No
key is ever logged. The file is looked at (one `stat` of its path: Kubernetes swaps a Secret's files by
symlink) at most once a second, on the request path; it is read again only when its inode, size or
modification time changed. A file that does not parse keeps the previous keys (an error names the file and
line, a metric counts it); with no keys at all, every protected request and `/ready` answer 503.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from pathlib import Path

from ..serving.metrics import AuthMetrics

log = logging.getLogger("retail_prediction.auth")

MAX_FILE_BYTES = 1_048_576
MIN_KEY_LENGTH = 16
CHECK_EVERY_SECONDS = 1.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


class KeyFileError(ValueError):
    """The keys file does not parse: the message names the file and the line."""


def parse_keys(text: str, source: str) -> list[tuple[str, bytes]]:
    """`(name, sha256(key))` for each `name:key` line of `text`; KeyFileError names `source` and the line."""
    keys: list[tuple[str, bytes]] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, key = (part.strip() for part in line.partition(":"))
        where = f"{source}, line {number}"
        if not colon or not _NAME.fullmatch(name):
            raise KeyFileError(f"{where}: expected `name:key` with a name of letters, digits, '.', '_', '-'")
        if len(key) < MIN_KEY_LENGTH or not _KEY.fullmatch(key):
            raise KeyFileError(f"{where}: the key of {name!r} must be {MIN_KEY_LENGTH}+ printable characters, "
                               "no spaces")
        digest = hashlib.sha256(key.encode()).digest()
        if name in names or digest in digests:
            raise KeyFileError(f"{where}: {name!r} repeats a name or a key of an earlier line")
        names.add(name)
        digests.add(digest)
        keys.append((name, digest))
    if not keys:
        raise KeyFileError(f"{source}: no keys (one `name:key` a line)")
    return keys


class KeyStore:
    """The keys of one file, kept current; `caller(key)` is the key's name, or None."""

    def __init__(self, path: Path, metrics: AuthMetrics) -> None:
        self.path = path
        self.metrics = metrics
        self._keys: tuple[tuple[str, bytes], ...] = ()
        self._stamp: tuple[int, ...] | None = None
        self._refused = False
        self._next_check = 0.0
        self.problem: str | None = f"no keys read yet from {path}"
        self.reload()

    def caller(self, key: str) -> str | None:
        if time.monotonic() >= self._next_check:
            self.reload()
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for name, known in self._keys:  # every key compared, match or not
            if hmac.compare_digest(digest, known):
                found = name
        return found

    def not_ready(self) -> str | None:
        """Why no request can be authenticated (no keys), or None."""
        if time.monotonic() >= self._next_check:
            self.reload()
        return self.problem

    def reload(self) -> None:
        """Read the file again if it changed (inode, size or mtime of the path, symlinks followed)."""
        self._next_check = time.monotonic() + CHECK_EVERY_SECONDS
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._refuse(f"cannot read the keys file {self.path}: {exc.strerror}", stamp=None)
            return
        stamp = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            if st.st_size > MAX_FILE_BYTES:
                raise KeyFileError(f"{self.path}: larger than {MAX_FILE_BYTES} bytes")
            keys = parse_keys(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError, KeyFileError) as exc:
            message = str(exc) if isinstance(exc, KeyFileError) else f"cannot read the keys file {self.path}: {exc}"
            self._refuse(message, stamp)
            return
        self._stamp, self._refused = stamp, False
        self._keys = tuple(keys)
        self.problem = None
        self.metrics.keys_loaded.set(len(keys))
        log.info("authentication keys loaded", extra={"keys_file": str(self.path), "keys": len(keys),
                                                     "names": [name for name, _ in keys]})

    def _refuse(self, message: str, stamp: tuple[int, ...] | None) -> None:
        if stamp == self._stamp and self._refused:
            return  # said already
        self._stamp, self._refused = stamp, True
        if stamp is not None:
            self.metrics.key_file_errors.inc()
        if self._keys:
            message += f"; the {len(self._keys)} keys read before stay in use"
        else:
            self.problem = message
        log.error(message, extra={"keys_file": str(self.path)})
