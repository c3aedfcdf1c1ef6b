"""The cluster's secret key: seals Secret values at rest and keys their digests.

One file (`--secret-key-file`, by default `secret.key` in the state folder, created 0600 on
first start) holds a Fernet key. From it come two keys:

- the **sealing** key (Fernet from `cryptography`: AES-128-CBC with HMAC-SHA256): Secret
  manifests and every value a pod spec takes from a Secret are stored sealed in SQL;
- the **digest** key (derived with HKDF): every digest of a Secret value that may leave
  the server (a Secret's hash, pod template hashes) is an HMAC under it (`gitops.keyed`).

The database records a check value of the key (`meta.key_check`); opening it with another
key is refused at start instead of failing later on every read. The key file is as
precious as the database: keep it in the same backups. Without it the sealed values cannot
be read, and the server will not start on that database (start afresh with a new database,
or restore the key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from collections import OrderedDict
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED_PREFIX = "sealed:v1:"
_CACHE = 50_000


class SecretKeyError(ValueError):
    """The key file is unusable, or is not the key this database was sealed with."""


class SecretKeys:
    """The sealing and digest keys derived from one Fernet key."""

    def __init__(self, material: bytes) -> None:
        try:
            self._fernet = Fernet(material)
        except (ValueError, TypeError) as exc:
            raise SecretKeyError(f"not a Fernet key (44 characters of URL-safe base64): {exc}") from None
        raw = base64.urlsafe_b64decode(material)
        self.digest_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"gitops secret digests"
        ).derive(raw)
        self._opened: OrderedDict[str, bytes] = OrderedDict()

    @classmethod
    def generate(cls) -> SecretKeys:
        """A fresh key held in memory only (tests, and stores that live in memory)."""
        return cls(Fernet.generate_key())

    @classmethod
    def from_file(cls, path: Path, *, create: bool = True) -> SecretKeys:
        """The key in `path`, created (0600, in a 0700 folder) when the file does not exist
        and `create` says so."""
        path = Path(path)
        if not path.exists() and not create:
            raise SecretKeyError("no such key file")
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it a moment ago: read theirs
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key() + b"\n")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretKeyError(
                f"{path}: the secret key file is readable by others (mode {stat.S_IMODE(mode):o}); "
                f"run: chmod 600 {path}"
            )
        material = path.read_bytes().strip()
        try:
            return cls(material)
        except SecretKeyError as exc:
            raise SecretKeyError(f"{path}: {exc}") from None

    def check_value(self) -> str:
        """A value that names this key without revealing it (stored in the database)."""
        return hmac.new(self.digest_key, b"gitops key check", hashlib.sha256).hexdigest()[:32]

    def seal(self, value: bytes) -> str:
        return SEALED_PREFIX + self._fernet.encrypt(value).decode()

    def open(self, sealed: str) -> bytes:
        """The value `seal` sealed; ValueError when it was sealed with another key."""
        value = self._opened.get(sealed)
        if value is not None:
            self._opened.move_to_end(sealed)
            return value
        if not sealed.startswith(SEALED_PREFIX):
            raise ValueError("not a sealed value")
        try:
            value = self._fernet.decrypt(sealed[len(SEALED_PREFIX) :].encode())
        except InvalidToken:
            raise ValueError("sealed with another key") from None
        self._opened[sealed] = value
        if len(self._opened) > _CACHE:
            self._opened.popitem(last=False)
        return value


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)
