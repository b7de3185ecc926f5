"""Private key files: created atomically with mode 0600, never overwritten, and refused when
group or others could read them. Shared by the audit log's keys and the agents' identities."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from bastion._errors import ConfigError


def create_private(path: Path, content: bytes) -> bool:
    """Write ``content`` to ``path`` atomically with mode 0600; False if ``path`` already exists.

    1. Write a temporary file beside it, created exclusively with mode 0600, and fsync it.
    2. Hard-link it to ``path`` (fails if ``path`` exists, so a key is never overwritten).
    3. Remove the temporary name.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"{str(path)!r}: cannot create key file: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise ConfigError(f"{str(path)!r}: cannot create key file: {exc.strerror}") from exc
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_private(path: Path) -> bytes:
    """The bytes of a key file; ``ConfigError`` if group or others may read it.
    ``FileNotFoundError`` passes through (callers decide whether to create the key)."""
    try:
        info = path.stat()
        if os.name == "posix" and info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise ConfigError(f"{str(path)!r}: key file mode is {mode:04o}; it must be 0600")
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"{str(path)!r}: cannot read key file: {exc.strerror}") from exc
