"""`borgmaster restore`: a data dir that starts a new cell from a `borgcfg snapshot save` file.

Everything is checked before anything is written: the dir must be empty (or absent), the
file must be a borgcell snapshot (magic), intact (checksum) and decodable by this release's
store. Then the dir gets two files, each written atomically:

- `raft.snapshot`: a PySyncObj dump in the cell's own format (fsm.write_restored_dump) at
  the snapshot's index, so `borgmaster run` loads it at start and its Raft log begins after
  it: the leader sends this dump, not a replay from index 1, to a replica added later.
- `borgcell.id` without a cell or replica: the first `borgmaster run` claims it, so any
  `--id/--raft/--peer` may start on it (one restored dir per replica, all from one file).

The state itself is rewritten for a new cell by `Store.restored_as_new_cell`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

from borgmaster.fsm import (
    ID_FILE,
    RESTORED_MIN_INDEX,
    make_private,
    write_restored_dump,
    write_restored_id,
)
from borgmaster.store import SNAPSHOT_FORMAT, Store
from cfg import snapshot


class RestoreError(Exception):
    """Why a restore was refused (one line); nothing was written."""


@dataclass(frozen=True)
class Restored:
    info: snapshot.SnapshotInfo
    index: int
    jobs: int
    tasks: int
    machines: int


def _empty(data_dir: str) -> bool:
    try:
        return not os.listdir(data_dir)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        raise RestoreError(f"{data_dir} is not a directory") from None


def restore(snapshot_path: str, data_dir: str) -> Restored:
    """Prepare `data_dir` from `snapshot_path` (see the module docstring)."""
    if not _empty(data_dir):
        raise RestoreError(f"{data_dir} is not empty: restore needs an empty data dir")
    try:
        info, state = snapshot.read(snapshot_path)
    except snapshot.SnapshotFileError as e:
        raise RestoreError(str(e)) from None
    if info.state_format != SNAPSHOT_FORMAT:
        raise RestoreError(
            f"{snapshot_path}: state format {info.state_format}, this release reads "
            f"{SNAPSHOT_FORMAT}"
        )
    store = Store()
    try:
        store.load_snapshot(state)
    except Exception as e:
        raise RestoreError(f"{snapshot_path}: the state does not decode ({e})") from None
    index = max(info.index, RESTORED_MIN_INDEX)
    taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.taken_ms / 1000))
    store.restored_as_new_cell(
        index,
        info.taken_ms,
        f"restored from a snapshot of cell {info.cell} at index {info.index} "
        f"(term {info.term}), taken {taken}",
    )
    data = store.snapshot_bytes()
    existed = os.path.isdir(data_dir)
    try:
        make_private(data_dir)  # 0700: the state holds every job's environment
        write_restored_dump(data_dir, data, index)
        write_restored_id(
            data_dir,
            {
                "cell": info.cell,
                "replica": info.replica,
                "index": info.index,
                "term": info.term,
                "taken_ms": info.taken_ms,
                "sha256": info.sha256,
            },
        )
    except BaseException:
        for name in ("raft.snapshot", "raft.snapshot.tmp", ID_FILE, ID_FILE + ".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(data_dir, name))
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(data_dir)
        raise
    with store.lock:
        return Restored(
            info=info,
            index=index,
            jobs=len(store.jobs),
            tasks=len(store.tasks),
            machines=len(store.machines),
        )
