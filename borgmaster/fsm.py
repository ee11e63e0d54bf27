"""The replicated state machine: a PySyncObj `SyncObj` with a single replicated method.

`apply(entry)` receives an encoded command (commands.py) and hands it to the Store. Snapshots
(PySyncObj's "full dump") use our own msgpack format instead of PySyncObj's default pickle: the
file holds the Store's state and the two Raft log entries plus the member list that PySyncObj
needs to resume from it. Both a journal and a full-dump file are configured, because with only
a journal PySyncObj's log compaction drops entries whose snapshot lived only in memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import random
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.journal import dumps as pysyncobj_dumps
from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.node import TCPNode

from borgmaster import raft_guard
from borgmaster.digests import Digests
from borgmaster.dumps import BackgroundDumps
from borgmaster.store import Store
from cfg import datadir
from cfg.datadir import DataDirInUse

raft_guard.install()

log = logging.getLogger("borgmaster.fsm")

FAIL_SUCCESS: int = FAIL_REASON.SUCCESS
FAIL_REQUEST_DENIED: int = FAIL_REASON.REQUEST_DENIED
FAIL_LEADER_CHANGED: int = FAIL_REASON.LEADER_CHANGED
"""PySyncObj's result codes for a proposal, for the proposer (named here so no other module
imports PySyncObj)."""

DUMP_MAGIC = b"BORGCELL-SNAPSHOT-1\n"
JOIN_HOLD_S = 1.0
"""A joining replica keeps pushing its election deadline this far ahead, every tick."""
SLOW_TICK_S = 0.15
"""A Raft tick longer than this is logged: half an election timeout without heartbeats."""
HEARTBEAT_GAP_HALF_LIFE_S = 30.0
"""How fast a follower's memory of a late heartbeat fades (`_follow_heartbeats`)."""
MAX_PATIENCE_S = 2.5
"""The longest a follower waits for a slow leader before campaigning: also the worst added
failover time when a leader dies on a saturated machine."""
STALL_S = 0.1
"""A tick that starts this much later than the previous one ended was held off the CPU (or
the GIL): this replica reads what arrived meanwhile before it judges anyone (see `_onTick`)."""
JOINED_MARKER = "joined"
"""File in the data dir recording that this replica has seen a leader (ends the hold)."""


@dataclass
class RaftTuning:
    """PySyncObj timing. At its defaults a commit waits up to 100 ms for the next
    append-entries round; ours sends entries as soon as they are queued (no batching delay)
    and keeps elections short so a failover takes well under two seconds."""

    append_entries_period: float = 0.05
    raft_min_timeout: float = 0.3
    raft_max_timeout: float = 0.6
    leader_fallback_timeout: float = 1.5
    auto_tick_period: float = 0.01
    # PySyncObj retries a lost peer connection every 5 s by default: a replica that just
    # restarted could then not vote for that long. Reconnect fast instead.
    connection_retry_time: float = 0.3
    # PySyncObj ships an entry larger than this in chunks ("transmission"), and its chunking
    # marks the last chunk by the raw entry's length instead of the pickled one's, so a
    # follower can get a truncated pickle (UnpicklingError, seen with ~2,000-task plans).
    # Keep every real entry below it: commands are msgpack, a 100k-task plan is a few MB.
    append_entries_batch_size_bytes: int = 64 << 20
    raft_nice: int = -10
    """The nice value of the Raft thread alone (Linux threads have their own): on a machine
    saturated by tasks it waited 0.2-0.6 s for a CPU, longer than an election timeout, and the
    cell changed leaders dozens of times in a 2,000-task start and stop. At -10 it weighs ~9x
    a normal thread when it wakes. Needs root (CAP_SYS_NICE); without it the thread keeps the
    process's priority (logged once). 0 leaves it alone."""
    raft_realtime: int = 0
    """SCHED_RR priority of the Raft thread (`borgmaster run --raft-realtime`: 1, the lowest
    real-time one; 0: ordinary, at `raft_nice`). A real-time thread runs as soon as it wakes,
    ahead of every ordinary thread of the machine, so a heartbeat is never queued behind a
    storm of task starts. Off by default: the same thread also replays the log at start and
    applies large plans, and while it computes it holds its CPU ahead of every ordinary
    process (the kernel's throttling leaves them 5%); the session's weight (`session_nice`)
    was enough for a 5,000-task start and stop on the dev cell. Set with
    SCHED_RESET_ON_FORK, so the children it forks (state digests, Raft dumps) and threads it
    starts run as ordinary ones. Needs root or CAP_SYS_NICE (and real-time runtime in its
    cgroup); otherwise `raft_nice`."""
    session_nice: int = -10
    """The nice value of the master's scheduling group when it leads its own session
    (priority.py: with autogroup, the Raft thread's nice only ranks it among the master's own
    threads). 0 leaves it alone."""
    log_compaction_min_entries: int = 20_000
    log_compaction_min_time: int = 300


class Role(IntEnum):
    """A replica's Raft role (PySyncObj's state codes, so a raw code converts with `Role(n)`)."""

    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2

    @property
    def label(self) -> str:
        """The lower-case name the API, metrics and UI show (`follower`, `leader`, ...)."""
        return self.name.lower()


@dataclass(frozen=True)
class RaftStatus:
    """One consistent reading of this replica's Raft state, as typed values: the rest of the
    master never sees PySyncObj's `getStatus()` dict or its private attributes."""

    role: Role
    term: int
    commit_index: int
    applied_index: int
    leader: str
    """The leader's Raft address, '' while none is known."""
    leader_commit_index: int = 0
    """The commit index the leader last told this replica (its own may lag behind it)."""
    log_len: int = 0
    elections_started: int = 0
    """Elections this replica started (each a new term), since it started."""
    tick_stalls: int = 0
    """Ticks of its Raft thread that came more than STALL_S late (CPU or GIL starvation)."""
    heartbeat_gap: float = 0.0
    """A follower's largest recent gap between its leader's messages, decaying (seconds):
    it waits at least twice this long before campaigning."""

    @property
    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    @property
    def caught_up(self) -> bool:
        """A leader is known and this replica has applied what the leader has committed."""
        return bool(self.leader) and self.applied_index >= self.leader_commit_index


JOURNAL_RECORD_OVERHEAD = 24
"""Bytes PySyncObj's FileJournal adds to each command: two 4-byte lengths, index and term."""


class DiskFull(OSError):
    """A journal append refused for lack of disk space (nothing was written)."""


_FALLOC_FL_KEEP_SIZE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _schedstat() -> tuple[float, float]:
    """This thread's time on a CPU and waiting for one, in seconds (0s where Linux does not
    say): tells a starved Raft thread from a busy or blocked one in the slow-tick log."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            ran, queued = f.read().split()[:2]
        return int(ran) / 1e9, int(queued) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def _allocate_keep_size(fd: int, offset: int, size: int) -> None:
    """fallocate(2) with FALLOC_FL_KEEP_SIZE: disk blocks for [offset, offset + size) without
    changing the file's size. Not `os.posix_fallocate`, which extends the file: PySyncObj's
    ResizableFile takes the file's size (`mmap.size()`) for the mapping's, and would then
    write past its mapping."""
    r = _libc.fallocate(
        ctypes.c_int(fd),
        ctypes.c_int(_FALLOC_FL_KEEP_SIZE),
        ctypes.c_long(offset),
        ctypes.c_long(size),
    )
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


LogEntry = tuple[bytes, int, int]
"""A PySyncObj log entry: (command, index, term)."""


@dataclass(frozen=True)
class AppendPlan:
    """What a follower does with one append-entries message whose previous entry it holds
    (`plan_append`)."""

    prev_index: int
    prev_term: int
    entries: list[LogEntry]
    """The entries to append after `prev_index` (those not already in the log)."""
    keep_suffix: bool
    """Every sent entry is already in the log and the log goes on past them: change nothing."""
    verified_end: int
    """The last index known to match the leader's log once this message is handled: the
    follower may commit no further, and tells the leader it matches up to here."""


def plan_append(
    prev_index: int,
    prev_term: int,
    entries: list[LogEntry],
    term_at: Callable[[int], int | None],
) -> AppendPlan:
    """Raft, section 5.3, receiver rules 3 and 4: "If an existing entry conflicts with a new
    one (same index but different terms), delete the existing entry and all that follow it;
    append any new entries not already in the log." Entries already present with the same
    term are skipped, so the log is cut only at the first real conflict, and never when
    there is none (a resend of entries the follower holds, or a heartbeat carrying an older
    `prevLogIdx`, leaves the log as it is). `term_at(i)` is the local term at index i, None
    past the end of the log."""
    i, t = prev_index, prev_term
    k = 0
    for entry in entries:
        if term_at(entry[1]) != entry[2]:
            break
        i, t = entry[1], entry[2]
        k += 1
    rest = list(entries[k:])
    verified_end = entries[-1][1] if entries else prev_index
    return AppendPlan(i, t, rest, not rest and term_at(i + 1) is not None, verified_end)


class BorgFSM(SyncObj):  # type: ignore[misc]
    """PySyncObj behind typed accessors. This is the only module that touches PySyncObj:
    everything else asks `status()`, `leader()`, `is_leader()` and `term()`, and gets
    `Role` values in the state-change callback."""

    def __init__(
        self,
        self_addr: str,
        peers: list[str],
        data_dir: str,
        store: Store,
        *,
        password: str | None = None,
        tuning: RaftTuning | None = None,
        on_state_changed: Callable[[Role, Role], None] | None = None,
        fsync: bool = False,
        join: bool = False,
        digests: Digests | None = None,
    ) -> None:
        t = tuning or RaftTuning()
        os.makedirs(data_dir, exist_ok=True)
        self._store = store
        self._digests = digests  # before PySyncObj starts replaying the journal into apply
        self._dumps = BackgroundDumps()
        bind = bind_address(self_addr)
        # Fail at start, with the reason, when the port is taken: PySyncObj would otherwise
        # retry the bind every second forever while the replica sits leaderless.
        probe_bind(bind, "raft")
        conf = SyncObjConf(
            # Exactly the --raft host: without it PySyncObj listens on 0.0.0.0, which would
            # expose the unauthenticated (pickle) Raft port of a loopback-only replica.
            bindAddress=bind,
            maxBindRetries=1,
            journalFile=os.path.join(data_dir, "raft.journal"),
            fullDumpFile=os.path.join(data_dir, "raft.snapshot"),
            serializer=self._serialize,
            deserializer=self._deserialize,
            serializeChecker=self._dumps.check,
            password=password,
            appendEntriesPeriod=t.append_entries_period,
            appendEntriesUseBatch=False,
            appendEntriesBatchSizeBytes=t.append_entries_batch_size_bytes,
            raftMinTimeout=t.raft_min_timeout,
            raftMaxTimeout=t.raft_max_timeout,
            connectionTimeout=max(3.5, t.raft_max_timeout),
            connectionRetryTime=t.connection_retry_time,
            leaderFallbackTimeout=t.leader_fallback_timeout,
            autoTickPeriod=t.auto_tick_period,
            logCompactionMinEntries=t.log_compaction_min_entries,
            logCompactionMinTime=t.log_compaction_min_time,
            dynamicMembershipChange=True,
            commandsWaitLeader=True,
            onStateChanged=_typed_roles(on_state_changed),
        )
        self._raft_priority_pending = bool(t.raft_nice or t.raft_realtime)  # tick thread sets
        self._raft_nice = t.raft_nice
        self._raft_realtime = t.raft_realtime
        self._tick_ended = raft_clock()  # read by `_onTick`, whose thread starts just below
        self.elections_started = 0
        self.tick_stalls = 0
        self.slow_ticks = 0
        self._slow_logged = 0.0
        self._tuning = t
        self.heartbeat_gap = 0.0
        """The largest recent gap between the leader's messages, decaying (seconds)."""
        self._heard_leader_at = raft_clock()
        self._joining = False
        self._stopping = False
        self._tick_apply_s = 0.0
        self._tick_applied = 0
        super().__init__(self_addr, peers, conf)
        try:
            self.waitBinded()
        except Exception:
            # Lost a race for the port after the probe: the tick thread has given up, so
            # close the journal here, then say why.
            self._doDestroy()
            probe_bind(bind, "raft")
            raise OSError(f"raft address {self_addr}: cannot bind") from None
        self._disk_full_logged = 0.0
        self.disk_full_appends = 0
        """Journal appends refused for lack of disk space (the entry was not taken)."""
        self._guard_journal_space()
        if fsync:
            self._fsync_journal()
        # Joining an existing cell: until the leader has added this replica it sends it
        # nothing, so the replica would time out and campaign again and again, and (Raft
        # without pre-vote) its ever higher term deposes the leader once it is a member.
        # Hold its election timer until a leader has spoken to it, once (the marker file
        # keeps the hold across a restart before `cell add`, and ends it after joining).
        self._stopping = False  # handing leadership over on the way out: never campaign
        self._joined_marker = os.path.join(data_dir, JOINED_MARKER)
        self._joining = join and not os.path.exists(self._joined_marker)
        if self._joining:
            self._SyncObj__raftElectionDeadline = raft_clock() + JOIN_HOLD_S
            self.addOnTickCallback(self._hold_election_while_joining)

    def _onTick(self, timeToWait: float = 0.0) -> None:
        """PySyncObj's tick, made to survive a saturated machine.

        1. Read before judging. PySyncObj's tick starts with the verdicts (a follower whose
           election deadline passed campaigns; a leader without a majority's answers for
           `leader_fallback_timeout` steps down) and reads its sockets only at its end.
           After the thread was held off the CPU longer than an election timeout it came
           back to heartbeats waiting unread and campaigned anyway, deposing a healthy
           leader. So after a stall, or when a follower's deadline has passed, it reads
           first: an election starts only when nothing from the leader is there either.
        2. Patience that follows the leader's cadence (`_follow_heartbeats`).
        3. Say what happened: slow ticks (with where the time went) and elections started,
           in the log and the metrics."""
        if self._raft_priority_pending:
            self._prioritize_raft_thread(self._raft_nice)
        now = raft_clock()
        gap = now - self._tick_ended
        if gap > STALL_S:
            self.tick_stalls += 1
        deadline = self._SyncObj__raftElectionDeadline
        leader = self._SyncObj__raftLeader
        waiting = self._SyncObj__raftState != Role.LEADER and deadline < now
        if (gap > STALL_S or waiting) and self._SyncObj__transport.ready:
            self._poller.poll(0)
        term = self.raftCurrentTerm
        silent = now - self._heard_leader_at
        self._tick_apply_s = 0.0
        self._tick_applied = 0
        sched = _schedstat()
        try:
            super()._onTick(timeToWait)
        finally:
            self._tick_ended = raft_clock()
        if self._tick_ended - now > SLOW_TICK_S:
            self._slow_tick(self._tick_ended - now, sched)
        self._follow_heartbeats(deadline, leader)
        me = self._SyncObj__selfNode
        if (
            self.raftCurrentTerm > term
            and me is not None
            and self._SyncObj__votedForNodeId == me.id
        ):
            self.elections_started += 1
            log.info(
                "campaigning for term %d: no word from a leader for %.2f s (this replica's "
                "Raft thread had last run %.2f s before)",
                self.raftCurrentTerm,
                silent,
                gap,
            )

    def _follow_heartbeats(self, deadline_before: float, leader_before: Any) -> None:
        """Stretch the election timeout to the leader's recent cadence (a phi-accrual-like
        failure detector, as Cassandra's and Akka's): the leader sends every 50 ms, but on a
        machine saturated by tasks its heartbeats came 0.2-0.6 s apart while it was healthy,
        and a 0.3-0.6 s timeout turned each late one into an election. A follower that saw
        gaps of G lately waits at least 2 G (the largest gap decays by half every
        HEARTBEAT_GAP_HALF_LIFE_S, and the wait is capped by MAX_PATIENCE_S), so a calm cell
        keeps its sub-second failover and a busy one keeps its leader."""
        now = raft_clock()
        leader = self._SyncObj__raftLeader
        if (
            self._SyncObj__raftState != Role.FOLLOWER
            or leader is None
            or leader is not leader_before
            or self._joining
            or self._stopping
        ):
            self._heard_leader_at = now  # gaps are measured from the first word of a leader
            return
        if self._SyncObj__raftElectionDeadline == deadline_before:
            return  # nothing from the leader in this tick
        gap = now - self._heard_leader_at
        self._heard_leader_at = now
        decay = 0.5 ** (gap / HEARTBEAT_GAP_HALF_LIFE_S)
        self.heartbeat_gap = max(gap, self.heartbeat_gap * decay)
        patience = min(MAX_PATIENCE_S, 2 * self.heartbeat_gap)
        if patience > self._tuning.raft_min_timeout:
            spread = self._tuning.raft_max_timeout - self._tuning.raft_min_timeout
            self._SyncObj__raftElectionDeadline = max(
                self._SyncObj__raftElectionDeadline,
                now + patience + random.uniform(0, spread),
            )

    def _slow_tick(self, took: float, sched_before: tuple[float, float]) -> None:
        """Count a slow tick; log at most one line per 10 s with where the time went."""
        self.slow_ticks += 1
        now = raft_clock()
        if now - self._slow_logged < 10.0:
            return
        self._slow_logged = now
        on_cpu, queued = (b - a for a, b in zip(sched_before, _schedstat(), strict=True))
        log.warning(
            "slow Raft tick: %.2f s as %s (%.2f s applying %d entries); the thread ran %.2f s, "
            "waited %.2f s for a CPU and %.2f s for the GIL or I/O (%d slow ticks so far)",
            took,
            Role(self._SyncObj__raftState).label,
            self._tick_apply_s,
            self._tick_applied,
            on_cpu,
            queued,
            max(0.0, took - on_cpu - queued),
            self.slow_ticks,
        )

    def _prioritize_raft_thread(self, nice: int) -> None:
        """Once, from the tick thread: real-time (`RaftTuning.raft_realtime`), else
        `RaftTuning.raft_nice`."""
        self._raft_priority_pending = False
        tid = threading.get_native_id()
        if self._raft_realtime > 0:
            try:
                os.sched_setscheduler(
                    tid,
                    os.SCHED_RR | os.SCHED_RESET_ON_FORK,
                    os.sched_param(self._raft_realtime),
                )
                log.info("Raft thread runs real-time (SCHED_RR %d)", self._raft_realtime)
                return
            except OSError as e:
                log.info("Raft thread is not real-time (%s): nice %d instead", e.strerror, nice)
        if not nice:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError as e:
            log.info("Raft thread keeps the process's priority (nice %d refused: %s)", nice, e)

    def _hold_election_while_stopping(self) -> None:
        """A replica handing over leadership on its way out must not campaign again: its
        election deadline lapsed while it led, so the tick right after it steps down would
        start an election it would likely win (it is the most up to date), undoing the
        hand-over (seen: terms 3 and 5 won by the stopping replica)."""
        if self._stopping:
            self._SyncObj__raftElectionDeadline = raft_clock() + JOIN_HOLD_S

    def _hold_election_while_joining(self) -> None:
        if not self._joining:
            return
        leader = self._getLeader()
        if leader is not None:
            self._joining = False
            try:
                with open(self._joined_marker, "w") as f:
                    f.write(f"{leader.address}\n")
            except OSError as e:
                log.warning("cannot record joining in %s: %s", self._joined_marker, e)
            log.info("joined the cell: leader %s", leader.address)
            return
        self._SyncObj__raftElectionDeadline = raft_clock() + JOIN_HOLD_S

    def _guard_journal_space(self) -> None:
        """Reserve the disk blocks of each journal record (`posix_fallocate`) before PySyncObj
        stores it through its mmap: its file grows by `ftruncate`, without blocks, and a store
        into such a page on a full disk is SIGBUS, the end of the master. Now an append on a
        full disk raises DiskFull (an OSError) before anything changes, in memory or on disk
        (diskspace.py has the reserve that normally refuses writes long before)."""
        journal = self._SyncObj__raftLog
        if getattr(journal, "_FileJournal__journalFile", None) is None:
            return  # an in-memory journal: nothing to reserve
        add = journal.add

        def add_with_space(command: bytes, idx: int, term: int) -> None:
            self.reserve_journal_space(len(command) + JOURNAL_RECORD_OVERHEAD, idx)
            add(command, idx, term)

        journal.add = add_with_space

    def reserve_journal_space(self, size: int, idx: int) -> None:
        """Allocate `size` bytes at the journal's end, or raise DiskFull."""
        journal = self._SyncObj__raftLog
        f = journal._FileJournal__journalFile._ResizableFile__f  # reopened when it grows
        offset = journal._FileJournal__currentOffset
        try:
            _allocate_keep_size(f.fileno(), offset, size)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.disk_full_appends += 1
            raise DiskFull(
                e.errno, f"no disk space for Raft log entry {idx} ({size} bytes) in the journal"
            ) from None

    def _disk_full(self, e: DiskFull, what: str) -> None:
        """Log a refused append at most every 10 s (PySyncObj would log a traceback per tick)."""
        now = time.monotonic()
        if now - self._disk_full_logged >= 10.0:
            self._disk_full_logged = now
            log.error("%s: %s (%d appends refused so far)", what, e, self.disk_full_appends)

    def _checkCommandsToApply(self) -> None:
        """PySyncObj's leader-side append of queued commands. On a full disk the command
        being appended is answered REQUEST_DENIED (the writer then names the full disk) and
        the master lives on; the writer's own reserve check normally refuses it first."""
        taken: list[Any] = []
        queue = self._SyncObj__commandsQueue
        get = queue.get_nowait

        def get_and_keep() -> Any:
            item = get()
            taken[:] = [item]
            return item

        queue.get_nowait = get_and_keep
        try:
            super()._checkCommandsToApply()
        except DiskFull as e:
            self._disk_full(e, "leader cannot append")
            if taken:
                self._deny(taken[0][1])
        finally:
            del queue.get_nowait

    def _deny(self, callback: Any) -> None:
        """Answer a command PySyncObj took off its queue but could not append."""
        if callback is None:
            return
        if isinstance(callback, tuple):  # forwarded by a follower: answer it there
            node, request_id = callback
            self._SyncObj__transport.send(
                node,
                {
                    "type": "apply_command_response",
                    "request_id": request_id,
                    "error": FAIL_REQUEST_DENIED,
                },
            )
        else:
            callback(None, FAIL_REQUEST_DENIED)

    def _fsync_journal(self) -> None:
        """Flush the journal (msync of PySyncObj's mmap) after every append, so an entry is on
        disk before this replica acknowledges it: a committed write survives power loss on a
        majority. PySyncObj itself never syncs its journal."""
        journal = self._SyncObj__raftLog  # PySyncObj keeps it name-mangled
        add = journal.add
        flush = getattr(journal, "flush", None)
        if flush is None:
            # Never run without the sync the operator asked for: a PySyncObj whose journal
            # cannot flush (an in-memory one, or a renamed method) must stop the start.
            raise RuntimeError(f"--fsync: the Raft journal ({type(journal).__name__}) cannot sync")

        def add_and_sync(command: bytes, idx: int, term: int) -> None:
            add(command, idx, term)
            flush()

        journal.add = add_and_sync
        # The term and vote (`raft.journal.meta`) must be durable before a vote is sent, or a
        # replica that crashes after voting may vote again in the same term. PySyncObj writes
        # the file and renames it over the old one without syncing either.
        meta = getattr(journal, "_FileJournal__metaStorer", None)
        if meta is None:
            raise RuntimeError("--fsync: the Raft journal's term and vote cannot be synced")
        meta.storeMeta = functools.partial(_store_meta_synced, meta.getPath())

    # ----- PySyncObj 0.3.17's append-entries, corrected to Raft section 5.3 ----------------

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        """Every message from a peer passes here first (PySyncObj registers this name with
        its transport, so the override is what it calls). Append-entries messages are
        rewritten by `_append_per_raft`; everything else goes to PySyncObj as it came.

        Why: the pinned PySyncObj's handler deletes the follower's log from `prevLogIdx + 1`
        whenever the log goes past it, conflict or not, and first reverses the membership
        changes it deletes (and is about to receive again). A resend of entries the follower
        already holds (the leader's next index moved back by a late `reset` reply), or a
        heartbeat with an older `prevLogIdx`, then cuts applied entries (logged CRITICAL
        "truncating already-applied log entries"), and an entry the leader cannot resend at
        once (one near its send cap) leaves the follower with a log shorter than what it
        applied: it could then win an election without committed entries."""
        if (
            isinstance(message, dict)
            and message.get("type") == "append_entries"
            and "prevLogIdx" in message
            and message.get("term", -1) >= self.raftCurrentTerm
        ):
            try:
                self._append_per_raft(node, message)
            except DiskFull as e:
                # Nothing was taken (space is reserved for the whole message first) and no
                # answer goes back: the leader resends, and commits with the others meanwhile.
                self._disk_full(e, "follower cannot append")
            return
        _PYSYNCOBJ_ON_MESSAGE(self, node, message)

    def _append_per_raft(self, node: Any, message: dict[str, Any]) -> None:
        transmission = message.get("transmission")
        if transmission in ("start", "process"):
            _PYSYNCOBJ_ON_MESSAGE(self, node, message)  # chunks of one big entry: buffered
            return
        if transmission == "finish":
            # Reassemble here (as PySyncObj would) so the whole entry can be planned.
            data = getattr(self, "_SyncObj__recvTransmission") + message["data"]  # noqa: B009
            self._SyncObj__recvTransmission = ""
            message = {k: v for k, v in message.items() if k not in ("transmission", "data")}
            message["entries"] = [pysyncobj_pickle.loads(data)]
        elif transmission is not None:
            _PYSYNCOBJ_ON_MESSAGE(self, node, message)  # PySyncObj's own error
            return
        journal = self._SyncObj__raftLog
        first, count = journal[0][1], len(journal)

        def term_at(index: int) -> int | None:
            j = index - first
            return int(journal[j][2]) if 0 <= j < count else None

        if term_at(message["prevLogIdx"]) != message["prevLogTerm"]:
            _PYSYNCOBJ_ON_MESSAGE(self, node, message)  # a gap or a conflict at prev: reject
            return
        plan = plan_append(
            message["prevLogIdx"], message["prevLogTerm"], message.get("entries") or [], term_at
        )
        if plan.entries and hasattr(journal, "_FileJournal__journalFile"):
            need = sum(len(e[0]) + JOURNAL_RECORD_OVERHEAD for e in plan.entries)
            self.reserve_journal_space(need, plan.entries[0][1])
        leader_commit = message["commit_index"]
        commit = min(leader_commit, plan.verified_end)  # Raft: commit <= the last new entry
        if plan.keep_suffix:
            # Nothing to append and nothing to cut: let PySyncObj do the leader, term and
            # timer bookkeeping and the commit index (a message without log part), and
            # answer the leader ourselves with how far this log is known to match its own.
            _PYSYNCOBJ_ON_MESSAGE(
                self,
                node,
                {"type": "append_entries", "term": message["term"], "commit_index": commit},
            )
            self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=plan.verified_end + 1, success=True)
        else:
            _PYSYNCOBJ_ON_MESSAGE(
                self,
                node,
                dict(
                    message,
                    prevLogIdx=plan.prev_index,
                    prevLogTerm=plan.prev_term,
                    entries=plan.entries,
                    commit_index=commit,
                ),
            )
        self._SyncObj__leaderCommitIndex = leader_commit  # what `caught_up` compares with

    # ----- typed accessors: what the rest of the master may know of PySyncObj ------------

    def status(self) -> RaftStatus:
        st = self.getStatus()
        leader = st["leader"]
        return RaftStatus(
            role=Role(st["state"]),
            term=int(st["raft_term"]),
            commit_index=int(st["commit_idx"]),
            leader_commit_index=int(st.get("leader_commit_idx") or 0),
            applied_index=int(st["last_applied"]),
            leader=leader.address if leader is not None else "",
            log_len=int(st.get("log_len", 0)),
            elections_started=self.elections_started,
            tick_stalls=self.tick_stalls,
            heartbeat_gap=self.heartbeat_gap,
        )

    def leader(self) -> str:
        """The leader's Raft address, '' while none is known."""
        node = self._getLeader()
        return node.address if node is not None else ""

    def is_leader(self) -> bool:
        return bool(self._isLeader())

    def term(self) -> int:
        return int(self.raftCurrentTerm)

    def applied_index(self) -> int:
        return int(self.raftLastApplied)

    def members(self) -> list[str]:
        """The other replicas' Raft addresses in the live membership."""
        return [n.address for n in self.otherNodes]

    def add_member(self, raft: str, callback: Callable[[Any, int], None]) -> None:
        self.addNodeToCluster(raft, callback=callback)

    def remove_member(self, raft: str, callback: Callable[[Any, int], None]) -> None:
        self.removeNodeFromCluster(raft, callback=callback)

    def transfer_leadership(self) -> None:
        """Ask PySyncObj to hand leadership to an up-to-date follower (it may refuse)."""
        self.transferLeadership(callback=lambda res, err: None)

    def hand_over_leadership(self, deadline_s: float) -> None:
        """On a graceful stop, so the cell does not wait out an election. PySyncObj refuses a
        transfer while the target lags by even one entry: retry until leadership has moved
        or the deadline passes."""
        if not any(self.isNodeConnected(n) for n in list(self._SyncObj__otherNodes)):
            log.info("no other replica connected: no leadership to hand over")
            return
        deadline = time.monotonic() + deadline_s
        self._stopping = True
        self._SyncObj__raftElectionDeadline = raft_clock() + JOIN_HOLD_S
        self.addOnTickCallback(self._hold_election_while_stopping)
        while self.is_leader() and time.monotonic() < deadline:
            try:
                self.transfer_leadership()
            except Exception as e:
                log.warning("leadership transfer failed: %s", e)
                return
            until = time.monotonic() + 0.1
            while self.is_leader() and time.monotonic() < until:
                time.sleep(0.01)
        if self.is_leader():
            log.warning("leadership not handed over within %.1f s; exiting anyway", deadline_s)
            return
        # Stepping down only means a candidate with a higher term exists: wait (within the
        # same deadline) until this replica sees the new leader, so the log says who took
        # over and the election is not left to run while nobody serves.
        me = self.selfNode.address
        while time.monotonic() < deadline:
            new = self.leader()
            if new and new != me:
                log.info("leadership handed over to %s", new)
                return
            time.sleep(0.01)
        log.warning("stepped down, but no new leader was seen within %.1f s", deadline_s)

    @replicated  # type: ignore[misc]
    def apply(self, entry: bytes) -> dict[str, Any]:
        """The one replicated method: decode and apply a command (errors come back as values).
        Then, at the indexes where replicas compare their state, a digest (digests.py)."""
        index = self.raftLastApplied + 1
        before = self._store.applied_index
        t0 = time.perf_counter()
        lock = self._store.lock
        holder = lock.holder()
        with lock:  # re-entered by Store.apply; taken here to see how long it took
            got = time.perf_counter()
            self._store.last_kinds.clear()
            result = self._store.apply(entry, index)
        applied = time.perf_counter()
        if self._digests is not None:
            self._digests.after_apply(before, index)
        done = time.perf_counter()
        if done - t0 > SLOW_TICK_S:
            kinds = ", ".join(f"{k} x{n}" for k, n in self._store.last_kinds.most_common(4))
            log.warning(
                "slow apply of entry %d (%d bytes: %s): %.2f s, %.2f s of it waiting for the "
                "store lock%s, %.2f s for the digest",
                index,
                len(entry),
                kinds,
                done - t0,
                got - t0,
                f" (held by {holder})" if holder and got - t0 > 0.01 else "",
                done - applied,
            )
        self._tick_apply_s += done - t0
        self._tick_applied += 1
        return result

    # ----- snapshots in our own format -----------------------------------------------------

    def _serialize(self, filename: str, raft_data: tuple[Any, ...]) -> None:
        """PySyncObj's serializer, on the tick thread between applies: the dump is encoded
        and written by a forked child (dumps.py)."""
        self._dumps.start(filename, functools.partial(self._dump_bytes, raft_data))

    def _dump_bytes(self, raft_data: tuple[Any, ...]) -> bytes:
        """The dump file's bytes (runs in the forked child: takes no lock)."""
        last_entry, prev_entry, cluster = raft_data
        doc = {
            "state": self._store.snapshot_bytes_unlocked(),
            "last": list(last_entry),
            "prev": list(prev_entry),
            "cluster": sorted(n.address if hasattr(n, "address") else str(n) for n in cluster),
        }
        return DUMP_MAGIC + msgpack.packb(doc, use_bin_type=True)

    def _deserialize(self, filename: str) -> tuple[Any, ...]:
        with open(filename, "rb") as f:
            data = f.read()
        if not data.startswith(DUMP_MAGIC):
            raise ValueError(f"{filename}: not a borgcell snapshot")
        try:
            doc = msgpack.unpackb(data[len(DUMP_MAGIC) :], raw=False, strict_map_key=False)
            last = tuple(doc["last"])
            prev = tuple(doc["prev"])
            cluster = {TCPNode(a) for a in doc["cluster"]}
            if not cluster:
                # A dump `borgmaster restore` wrote knows no members (any --raft/--peer may
                # start on it): keep the membership this replica was started with, which
                # PySyncObj would otherwise replace with the dump's (empty) one.
                cluster = {self.selfNode, *self.otherNodes}
            self._store.load_snapshot(doc["state"])
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{filename}: corrupt borgcell snapshot: {e}") from None
        return (last, prev, cluster)


RESTORED_MIN_INDEX = 10
"""The lowest Raft index a restored dump claims. A replica added later (`cell add`) holds one
entry (index 1); the leader sends it the dump, rather than entries, only when its log starts
above that entry, so a restored log must not start at index 1 or 2."""


def write_restored_dump(data_dir: str, state: bytes, index: int) -> str:
    """Write `raft.snapshot` for a replica that starts a new cell from a backup.

    The dump is the one PySyncObj itself would write (`_serialize`'s format): `state` at
    Raft `index`, the two log entries PySyncObj resumes from (no-ops at `index - 1` and
    `index`, term 0: the new cell's terms start at 1 above them), and no members (the
    replica keeps its --peer list: see `_deserialize`). On start PySyncObj loads it and
    begins its log right after it, so every replica, and a replica added later (sent this
    dump by the leader, not a replay from index 1), holds the restored state.
    Returns the path; written atomically (temporary file, fsync, rename)."""
    noop = bytes([1])  # PySyncObj's _COMMAND_TYPE.NO_OP
    doc = {
        "state": state,
        "last": [noop, index, 0],
        "prev": [noop, index - 1, 0],
        "cluster": [],
    }
    path = os.path.join(data_dir, "raft.snapshot")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(DUMP_MAGIC)
        f.write(msgpack.packb(doc, use_bin_type=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


_PYSYNCOBJ_ON_MESSAGE: Callable[[Any, Any, Any], None] = SyncObj._SyncObj__onMessageReceived
"""The pinned PySyncObj's message handler (BorgFSM overrides the name to reach it first)."""


def _typed_roles(
    cb: Callable[[Role, Role], None] | None,
) -> Callable[[int, int], None] | None:
    """PySyncObj calls back with raw state codes; the master gets `Role` values."""
    if cb is None:
        return None

    def on_state_changed(old: int, new: int) -> None:
        cb(Role(old), Role(new))

    return on_state_changed


def bind_address(addr: str) -> str:
    """HOST:PORT as PySyncObj's bindAddress wants it (no brackets around an IPv6 host)."""
    host, _, port = addr.rpartition(":")
    return f"{host.strip('[]')}:{port}"


def probe_bind(addr: str, what: str) -> None:
    """Bind (and release) `addr` the way the real listener will, so a port in use or a host
    that is not ours fails start-up with one line naming the address, not a traceback or a
    replica that retries silently forever."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as e:
        raise OSError(f"{what} address {addr}: cannot resolve host ({e})") from None
    family, _, _, _, sockaddr = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(sockaddr)
        s.listen(1)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise OSError(f"{what} address {addr} is in use") from None
        raise OSError(f"{what} address {addr}: cannot bind ({e.strerror or e})") from None
    finally:
        s.close()


def fail_reason_name(code: int) -> str:
    for name in dir(FAIL_REASON):
        if not name.startswith("_") and getattr(FAIL_REASON, name) == code:
            return name.lower()
    return f"code-{code}"


ID_FILE = "borgcell.id"


def make_private(data_dir: str) -> None:
    """Create `data_dir` 0700 (or tighten an existing one) and its regular files to 0600.

    Only root or the master's own account may read Raft state: the journal and snapshots
    carry every job's environment, and the Raft secret lives beside them."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    st = os.lstat(data_dir)
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirError(f"{data_dir} is not a directory")
    os.chmod(data_dir, 0o700)
    with os.scandir(data_dir) as entries:
        for e in entries:
            if e.is_file(follow_symlinks=False):
                os.chmod(e.path, stat.S_IMODE(e.stat(follow_symlinks=False).st_mode) & 0o600)


SECRET_FILE = "raft-secret"
"""The Raft secret a single-replica cell generates for itself (not `raft.*`: those are
PySyncObj's files, whose presence marks a used data dir)."""


def own_raft_secret(data_dir: str) -> str:
    """The secret of a single-replica cell: read from its data dir, or made there (0600) on
    first start. PySyncObj unpickles every frame that reaches its port unless a secret is
    set, and a replica alone still listens: without one, any local process (a task, for
    one) could run code in the master through a pickle sent to 127.0.0.1."""
    make_private(data_dir)
    path = os.path.join(data_dir, SECRET_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        tmp = path + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return secret
    with os.fdopen(fd) as f:
        secret = f.read().strip()
    if len(secret) < 16:
        raise DataDirError(f"{path}: damaged Raft secret (remove it to make a new one)")
    return secret


class DataDirError(Exception):
    """A data dir that belongs to another cell or replica, or is damaged: refuse to start."""


def _store_meta_synced(path: str, meta: dict[str, Any]) -> None:
    """PySyncObj's MetaStorer.storeMeta, durable: temp file, fsync, rename, directory fsync
    (a crash leaves the old meta or the new one, both on disk, never an empty file)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(pysyncobj_dumps(meta))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


LOCK_FILE = "lock"
"""Held (flock) by the one process that uses the data dir; it holds that process's pid."""


def lock_data_dir(data_dir: str) -> None:
    """Take the data dir for this process, or raise DataDirError naming the holder's pid
    (cfg/datadir.py): two replicas on one data dir would interleave their writes to one
    journal through two mmaps, and whichever restarts next replays a corrupt file."""
    try:
        datadir.lock(data_dir, LOCK_FILE)
    except DataDirInUse as e:
        raise DataDirError(str(e)) from None


def check_data_dir(data_dir: str, cell: str, replica: str) -> None:
    """Refuse to start on a data dir that is not this replica's, instead of joining silently.

    First the dir is locked for this process (`lock_data_dir`: a second process on it stops
    here). The first start writes `borgcell.id`; later starts compare it. Raft files without
    the id file, or a snapshot that is not ours, are refused too. The dir is made private
    (0700, its files 0600: the journal holds every job's env), also when an older release
    created it."""
    lock_data_dir(data_dir)
    make_private(data_dir)
    id_path = os.path.join(data_dir, ID_FILE)
    raft_files = [n for n in os.listdir(data_dir) if n.startswith("raft.")]
    if os.path.exists(id_path):
        try:
            with open(id_path, "rb") as f:
                doc = msgpack.unpackb(f.read(), raw=False)
            restored = "cell" not in doc and isinstance(doc.get("restored"), dict)
            got = ("", "") if restored else (doc["cell"], doc["replica"])
        except Exception:
            raise DataDirError(f"{id_path}: unreadable (damaged data dir)") from None
        if restored:
            # `borgmaster restore` leaves the id open: the first replica to start on the dir
            # claims it (any --id), and later starts must match that one.
            log.info(
                "data dir restored from a snapshot of cell %s at index %s: now replica %s of %s",
                doc["restored"].get("cell"),
                doc["restored"].get("index"),
                replica,
                cell,
            )
            _write_id(id_path, cell, replica)
        elif got != (cell, replica):
            raise DataDirError(
                f"{data_dir} belongs to replica '{got[1]}' of cell '{got[0]}', "
                f"not replica '{replica}' of cell '{cell}'"
            )
    elif raft_files:
        raise DataDirError(f"{data_dir} has Raft files but no {ID_FILE}: not a borgcell data dir")
    snap = os.path.join(data_dir, "raft.snapshot")
    if os.path.exists(snap):
        # Decode it fully: PySyncObj only logs a snapshot it cannot load and starts empty.
        try:
            with open(snap, "rb") as f:
                data = f.read()
            if not data.startswith(DUMP_MAGIC):
                raise ValueError("bad header")
            doc = msgpack.unpackb(data[len(DUMP_MAGIC) :], raw=False, strict_map_key=False)
            if not isinstance(doc, dict) or not {"state", "last", "prev", "cluster"} <= set(doc):
                raise ValueError("missing fields")
            Store().load_snapshot(doc["state"])
        except Exception as e:
            raise DataDirError(
                f"{snap}: not a readable borgcell snapshot ({e}); damaged or foreign data dir"
            ) from None
    if not os.path.exists(id_path):
        _write_id(id_path, cell, replica)


def _write_id(id_path: str, cell: str, replica: str) -> None:
    tmp = id_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(msgpack.packb({"cell": cell, "replica": replica, "format": 1}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, id_path)


def write_restored_id(data_dir: str, origin: dict[str, Any]) -> None:
    """The id file of a restored data dir: no cell or replica yet (the first start claims
    them, `check_data_dir`), only where the state came from."""
    id_path = os.path.join(data_dir, ID_FILE)
    tmp = id_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(msgpack.packb({"format": 1, "restored": origin}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, id_path)
