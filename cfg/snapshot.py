"""The snapshot file: what `borgcfg snapshot save` writes and `borgmaster restore` reads.

Both programs need the format and neither may import the other, so it lives in the contract.
Layout (every integer big-endian):

    BORGCELL-BACKUP-1\\n             magic: a file that does not start with it is foreign
    u32 N, N bytes of JSON          the header: cell, replica, index, term, taken_ms,
                                    state_format, size and sha256 of the state
    size bytes                      the state (the store's own msgpack snapshot encoding)
    32 bytes                        SHA-256 of everything above: a flipped bit anywhere,
                                    header included, or a truncated file is "corrupt"

The header is JSON so `head -c 400 FILE` shows an operator which index a file holds. A file
is written to a temporary name beside its destination, synced, then renamed over it (and the
directory synced): a crash or a broken stream leaves the previous snapshot, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

MAGIC = b"BORGCELL-BACKUP-1\n"
DIGEST_LEN = 32
MAX_HEADER = 1 << 16


class SnapshotFileError(Exception):
    """A snapshot file that cannot be used (foreign, corrupt, unreadable): one line."""


@dataclass(frozen=True)
class SnapshotInfo:
    """The header: where in the Raft log the state was taken, and how to check it."""

    cell: str
    replica: str
    index: int
    term: int
    taken_ms: int
    state_format: int
    size: int
    sha256: str


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(
    path: str,
    info: SnapshotInfo,
    chunks: Iterable[bytes],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write `chunks` (the state, `info.size` bytes with `info.sha256`) to `path` atomically;
    returns the file's size. The state is checked against the header before the rename, so
    a stream that broke or lied leaves nothing behind (SnapshotFileError). The file is 0600:
    the state holds every job's environment."""
    header = json.dumps(asdict(info), sort_keys=True).encode()
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        whole = hashlib.sha256()
        state = hashlib.sha256()
        got = 0
        with os.fdopen(fd, "wb") as f:
            lead = MAGIC + struct.pack(">I", len(header)) + header
            f.write(lead)
            whole.update(lead)
            for chunk in chunks:
                f.write(chunk)
                whole.update(chunk)
                state.update(chunk)
                got += len(chunk)
                if progress is not None:
                    progress(got)
            if got != info.size or state.hexdigest() != info.sha256:
                raise SnapshotFileError(
                    f"the state received ({got} bytes) does not match its header "
                    f"({info.size} bytes, sha256 {info.sha256[:12]}...): nothing written"
                )
            f.write(whole.digest())
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path)
    return size


def read(path: str) -> tuple[SnapshotInfo, bytes]:
    """The header and state of a snapshot file, checked end to end; SnapshotFileError with
    one line (foreign, corrupt, unreadable) otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SnapshotFileError(f"{path}: cannot read ({e.strerror or e})") from None
    if not data.startswith(MAGIC):
        raise SnapshotFileError(f"{path}: not a borgcell snapshot (foreign file)")
    body, digest = data[:-DIGEST_LEN], data[-DIGEST_LEN:]
    if len(data) < len(MAGIC) + 4 + DIGEST_LEN or hashlib.sha256(body).digest() != digest:
        raise SnapshotFileError(f"{path}: corrupt snapshot (checksum mismatch or truncated)")
    (n,) = struct.unpack(">I", body[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        if n > MAX_HEADER:
            raise ValueError("header too large")
        doc = json.loads(body[start : start + n])
        info = SnapshotInfo(**doc)
    except (ValueError, TypeError) as e:
        raise SnapshotFileError(f"{path}: corrupt snapshot header ({e})") from None
    state = body[start + n :]
    if len(state) != info.size or hashlib.sha256(state).hexdigest() != info.sha256:
        raise SnapshotFileError(f"{path}: corrupt snapshot (the state does not match its header)")
    return info, state
