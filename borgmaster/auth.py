"""The Borgmaster's authorization table (SPEC part 2, "Authorization") and the per-object
checks that need the store: a job's owner, a machine's own Borglet, quota bands.

The table says which roles may call a method at all; handlers then use `acting_user` and
`may_see_secrets` for what depends on the object. Both read the caller from the verified
identity (cfg.grpcauth.identity), never from a request field.
"""

from __future__ import annotations

import re
from typing import Any

import grpc

from cfg.grpcauth import ANY_AUTHENTICATED, Rule, identity
from cfg.tls import INSECURE, Identity, Role

READERS = frozenset({Role.ADMIN, Role.USER, Role.READER, Role.MASTER})
OWNERS = frozenset({Role.ADMIN, Role.USER})
ADMINS = frozenset({Role.ADMIN})
PEOPLE = frozenset({Role.ADMIN, Role.USER, Role.READER})


def _spec_name(r: Any) -> str:
    try:
        v = r.spec.fields["name"].string_value
    except (AttributeError, KeyError):
        return ""
    return str(v)


def _name(r: Any) -> str:
    return str(getattr(r, "name", "") or getattr(r, "job", ""))


def _task(r: Any) -> str:
    return f"{r.job}/{r.index}"


RULES: dict[str, Rule] = {
    # jobs: owners (the store checks which jobs are theirs) and admins
    "SubmitJob": Rule(OWNERS, "submit jobs", write=True, target=_spec_name),
    "UpdateJob": Rule(OWNERS, "update jobs", write=True, target=_spec_name),
    "KillJob": Rule(OWNERS, "kill jobs", write=True, target=_name),
    "Rollback": Rule(OWNERS, "roll back jobs", write=True, target=_name),
    "ReadTaskLogs": Rule(OWNERS, "read task logs", target=_task),
    "PromoteJob": Rule(OWNERS, "promote jobs", write=True, target=_name),
    # a read, but it copies the whole state and runs the scheduler: for those who may submit
    "PlanJobs": Rule(OWNERS, "plan jobs"),
    # audited by the handler once it has read which task (the target is in the stream)
    "ExecTask": Rule(OWNERS, "exec into tasks"),
    # reads: everyone the cell knows but Borglets
    "GetJob": Rule(READERS, "read jobs"),
    "JobHistory": Rule(READERS, "read job history"),
    "ListJobs": Rule(READERS, "list jobs"),
    "ListMachines": Rule(READERS, "list machines"),
    "ListEndpoints": Rule(READERS, "read endpoints"),
    "CellStatus": Rule(READERS, "read the cell's status"),
    "ReplicaStatus": Rule(READERS, "read a replica's status"),
    "WatchEvents": Rule(READERS, "read events"),
    "ExplainTask": Rule(READERS, "explain tasks"),
    "ListQuotas": Rule(READERS, "read quotas"),
    "CreateUiSession": Rule(PEOPLE, "open the web UI"),
    # the cell: admins only
    "SetQuota": Rule(
        ADMINS, "set quotas", write=True, target=lambda r: f"{r.quota.user}/{r.quota.band}"
    ),
    "DrainMachine": Rule(ADMINS, "drain machines", write=True, target=_name),
    # A snapshot holds every job's environment (secrets): admins only, and audited like a
    # write (it changes nothing, but who copied the whole state out is worth a record).
    "SaveSnapshot": Rule(ADMINS, "save snapshots", write=True),
    "ChangeMembership": Rule(
        ADMINS, "change the cell's membership", write=True, target=lambda r: r.raft
    ),
    # Borglets: their own machine only (checked in the handler: `check_machine`), and hollow
    # fleets their own simulated machines. Syncs are machine reports every second or so, not
    # operator actions: not audited.
    "Sync": Rule(frozenset({Role.BORGLET, Role.HOLLOW}), "sync as a machine"),
    # The stream form of Sync: the same roles; the handler checks the machine its first
    # message registers (`check_machine`), and every later message is bound to it.
    "Link": Rule(frozenset({Role.BORGLET, Role.HOLLOW}), "link as a machine"),
    # A replica hands the leader the reports of the Borglets it serves: masters only (a
    # master is trusted to relay for its machines, as for every relayed call).
    "RelayLink": Rule(frozenset({Role.MASTER}), "relay Borglet reports"),
}

assert all(r.roles <= ANY_AUTHENTICATED for r in RULES.values())


class Denied(Exception):
    """An object-level refusal; the handler turns it into PERMISSION_DENIED."""


def caller(context: grpc.ServicerContext) -> Identity:
    return identity(context)


def acting_user(ident: Identity, claimed: str) -> str:
    """The user a write acts as, for the store's owner checks: a user acts as itself, an admin
    as nobody in particular ("": every job), an insecure caller as whatever it claims.
    With TLS a claimed `--user` must be the certificate's name."""
    if ident is INSECURE:
        return claimed
    if claimed and claimed != ident.name:
        raise Denied(
            f"{ident.name} may not act as user '{claimed}' (with TLS --user must be absent or "
            "the certificate's name)"
        )
    return "" if ident.is_admin else ident.name


def may_see_secrets(ident: Identity, owner: str) -> bool:
    """Env, logs and exec: the job's owner and admins (and an insecure cell's callers)."""
    return ident is INSECURE or ident.is_admin or (ident.role is Role.USER and ident.name == owner)


def check_owner_for(ident: Identity, owner: str, action: str, job: str) -> None:
    if not may_see_secrets(ident, owner):
        raise Denied(f"{ident.name} may not {action} of job '{job}' (owner {owner})")


def hollow_machine_of(cert_name: str, machine: str) -> bool:
    """Whether `machine` is one a hollow certificate named `cert_name` may sync as:
    `CERT_NAME` + an optional separator + five digits (`borglet hollow --name-prefix
    hollow-` with a certificate named `hollow` syncs as hollow-00000, hollow-00001, ...)."""
    return re.fullmatch(re.escape(cert_name) + r"[-._]?[0-9]{5}", machine) is not None


def check_machine(ident: Identity, machine: str) -> None:
    """A Borglet syncs only as the machine its certificate names (the node authorizer).

    One process simulating 10,000 machines cannot hold 10,000 certificates cheaply, so a
    `hollow` certificate (its own role: a real Borglet's certificate never gets this rule)
    stands for the numbered machines of its prefix, and for nothing else. An admin issuing a
    hollow certificate grants those names, so it must not be a prefix real machines use."""
    if ident is INSECURE:
        return
    if ident.role is Role.HOLLOW:
        if not hollow_machine_of(ident.name, machine):
            raise Denied(
                f"{ident.name} (hollow) may sync only as {ident.name}[-]NNNNN, not as '{machine}'"
            )
        return
    if ident.name != machine:
        raise Denied(f"{ident.name} (borglet) may not sync as machine '{machine}'")
