"""Replica state digests: evidence that the replicas hold the same state.

Raft only promises that replicas apply the same log; a non-deterministic apply, a bug in a
snapshot round trip or a flipped bit in memory would leave one replica serving different
state without anything noticing. So every replica hashes its store (`Store.state_digest`)
right after applying the first entry at or past each multiple of `every` log indexes (default
1,000). The Raft index is the same on every replica, so they hash at the same indexes (a
replica that restored a snapshot past one simply has no digest there). Each replica publishes
its recent (index, digest) pairs in ReplicaStatus (`recent_digests`); a checker thread on every
replica compares its own with its peers' at the latest common index (`judge`). A difference is
a loud log line, the `borg_replica_digest_mismatch` gauge (and its alert), and, on the replica
whose digest a majority of the cell does not share, a failing `/readyz`.

Cost: hashing 100k tasks takes ~0.2 s of CPU, too long for the apply thread, which is also
PySyncObj's tick thread (heartbeats, votes). So the apply thread only forks (~10 ms with 100k
tasks): the child holds a copy-on-write image of the store frozen at exactly that index, hashes
it, writes the digest to a pipe and `_exit`s; a collector thread reads it (Redis's BGSAVE works
the same way). The child must not take any lock (another thread may have held one at the
fork, and it is gone in the child): `state_digest` takes none, logs nothing and uses the
built-in blake2b. While one child runs, the next due digest is skipped rather than queued.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("borgmaster.digests")

_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not load anything
_PR_SET_PDEATHSIG = 1

DIGEST_EVERY = 1000
"""Default distance, in Raft log indexes, between two digests (`borgmaster run --digest-every`;
every replica of a cell must use the same value, or they never hash at a common index)."""
KEEP = 16
"""Recent digests a replica keeps and publishes (so a peer a few rounds behind or ahead still
has common indexes with it)."""
CHILD_TIMEOUT_S = 120.0
"""A hashing child that has not answered by then is killed (and that digest skipped)."""


def due(before: int, after: int, every: int) -> bool:
    """Whether applying the entries after `before` up to `after` crossed a multiple of
    `every` (the digest is then taken at `after`: the same on every replica, since entries
    that apply nothing, such as membership changes, are the same on every replica too)."""
    return every > 0 and after // every > before // every


@dataclass(frozen=True)
class Verdict:
    """What the last comparison with the peers found."""

    index: int = 0
    """The log index compared (0: no common index with any peer yet)."""
    mismatched: tuple[str, ...] = ()
    """Peers whose digest at `index` differs from this replica's."""
    odd_one_out: bool = False
    """A majority of the cell shares a digest at `index` that is not this replica's."""
    majority_digest: str = ""


def judge(mine: Mapping[int, str], peers: Mapping[str, Mapping[int, str]], size: int) -> Verdict:
    """Compare this replica's digests with its peers' at the latest index this replica and at
    least one peer both have. `size` is the cell's replica count (this one included): a digest
    shared by `size // 2 + 1` replicas is the cell's, and a replica holding another one is the
    odd one out. Without such a majority (two replicas of three disagreeing while the third is
    unreachable) every side reports the mismatch and none calls itself wrong."""
    common = [i for i in mine if any(i in d for d in peers.values())]
    if not common:
        return Verdict()
    i = max(common)
    ours = mine[i]
    theirs = {p: d[i] for p, d in peers.items() if i in d}
    mismatched = tuple(sorted(p for p, d in theirs.items() if d != ours))
    votes = Counter([ours, *theirs.values()])
    top, n = votes.most_common(1)[0]
    majority = n >= size // 2 + 1
    return Verdict(
        index=i,
        mismatched=mismatched,
        odd_one_out=majority and top != ours,
        majority_digest=top if majority else "",
    )


@dataclass
class Digests:
    """This replica's recent digests (index -> hex), computed in forked children."""

    compute: Callable[[], str]
    """Hashes the state as it is now (the store's `state_digest`); runs in the child."""
    every: int = DIGEST_EVERY
    recent: OrderedDict[int, str] = field(default_factory=OrderedDict)
    skipped: int = 0
    """Due digests not taken because the previous child was still hashing."""
    last_seconds: float = 0.0
    """How long the last child took, fork to answer."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _busy: bool = False

    def after_apply(self, before: int, after: int) -> None:
        """Called by the apply thread right after applying up to `after` (with the store in
        exactly that state, and no other thread changing it)."""
        if not due(before, after, self.every):
            return
        with self._lock:
            if self._busy:
                self.skipped += 1
                return
            self._busy = True
        try:
            self._fork(after)
        except OSError as e:
            with self._lock:
                self._busy = False
            log.warning("state digest at index %d skipped: cannot fork (%s)", after, e)

    def _fork(self, index: int) -> None:
        r, w = os.pipe()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: no locks, no logging, no cleanup handlers
            code = 0
            try:
                # Go with the master: a child outliving it would hold the data dir's lock.
                _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                os.close(r)
                os.write(w, self.compute().encode())
            except BaseException:
                code = 1
            os._exit(code)
        os.close(w)
        threading.Thread(
            target=self._collect, args=(pid, r, index, started), name="digest", daemon=True
        ).start()

    def _collect(self, pid: int, r: int, index: int, started: float) -> None:
        data = b""
        try:
            deadline = started + CHILD_TIMEOUT_S
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([r], [], [], left)
                if not ready:
                    break
                chunk = os.read(r, 256)
                if not chunk:
                    break
                data += chunk
            else:
                log.warning(
                    "state digest at index %d: hashing took over %.0f s", index, CHILD_TIMEOUT_S
                )
        finally:
            os.close(r)
            try:
                if not data:
                    os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            with self._lock:
                self._busy = False
        if len(data) != 32:
            log.warning("state digest at index %d failed (child answered %r)", index, data[:64])
            return
        self.record(index, data.decode(), time.monotonic() - started)

    def record(self, index: int, digest: str, seconds: float = 0.0) -> None:
        with self._lock:
            self.recent[index] = digest
            self.recent.move_to_end(index)
            while len(self.recent) > KEEP:
                self.recent.popitem(last=False)
            self.last_seconds = seconds
        log.debug("state digest at index %d: %s (%.3f s)", index, digest, seconds)

    def snapshot(self) -> dict[int, str]:
        with self._lock:
            return dict(self.recent)

    def latest(self) -> tuple[int, str]:
        with self._lock:
            if not self.recent:
                return 0, ""
            i = max(self.recent)
            return i, self.recent[i]


class DigestChecker:
    """Compares this replica's digests with its peers' every `period_s` (a thread on every
    replica; a replica cannot trust only the leader's word about itself)."""

    def __init__(
        self,
        digests: Digests,
        peers: Callable[[], dict[str, dict[int, str]]],
        size: Callable[[], int],
        stop: threading.Event,
        period_s: float = 2.0,
    ) -> None:
        self.digests = digests
        self._peers = peers
        self._size = size
        self._stop = stop
        self.period_s = period_s
        self.verdict = Verdict()
        self._reported: tuple[int, tuple[str, ...], bool] = (0, (), False)

    def start(self) -> None:
        threading.Thread(target=self._run, name="digest-check", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.check()
            except Exception as e:  # keep checking; one failed round says nothing
                log.warning("state digest check failed: %s", e)

    def check(self) -> Verdict:
        mine = self.digests.snapshot()
        if not mine:
            return self.verdict
        v = judge(mine, self._peers(), self._size())
        if v.index == 0:
            return self.verdict  # nobody to compare with right now: keep the last verdict
        self.verdict = v
        key = (v.index, v.mismatched, v.odd_one_out)
        if v.mismatched and key[1:] != self._reported[1:]:
            log.critical(
                "STATE DIGEST MISMATCH at log index %d: this replica holds %s; differing: %s%s",
                v.index,
                mine[v.index],
                ", ".join(v.mismatched),
                "; a majority holds "
                + v.majority_digest
                + ": THIS REPLICA DIVERGED, it reports not ready (rebuild its data dir from a "
                "healthy replica)"
                if v.odd_one_out
                else "",
            )
        elif not v.mismatched and self._reported[1]:
            log.warning("state digests agree again at log index %d", v.index)
        self._reported = key
        return v
