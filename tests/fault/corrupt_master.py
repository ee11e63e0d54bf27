"""`python -m tests.fault.corrupt_master run ...`: a real `borgmaster run` whose store goes
wrong on purpose, for the state digest tests only (production code has no such path).

Right after applying the SubmitJob of a job named `CORRUPT_JOB`, this replica (and only it)
changes that job's priority in its own store, as a non-deterministic apply or a flipped bit
would: Raft still agrees on the log, but this replica's state no longer matches the others'.
"""

from __future__ import annotations

from typing import Any

from borgmaster import commands as C
from borgmaster.store import Store

CORRUPT_JOB = "diverge-here"

_apply = Store.apply


def _corrupting_apply(self: Store, entry: bytes, index: int) -> Any:
    result = _apply(self, entry, index)
    try:
        cmd = C.decode(entry)
    except C.CommandError:
        return result
    cmds = [C.decode(bytes(e)) for e in cmd.entries] if isinstance(cmd, C.Batch) else [cmd]
    for c in cmds:
        if isinstance(c, C.SubmitJob) and c.spec.name == CORRUPT_JOB:
            with self.lock:
                job = self.jobs.get(CORRUPT_JOB)
                if job is not None:
                    job.spec.priority += 1
    return result


Store.apply = _corrupting_apply  # type: ignore[method-assign]

if __name__ == "__main__":
    from borgmaster.cli import main

    main()
