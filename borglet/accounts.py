"""Which unix accounts a task may run as on this machine (`run_as` policy).

A job author picks `run_as`; the machine's owner decides what that may be. Tasks may run only
as the accounts listed with `--task-users` (by default just `--task-user`), and never as an
account that is root in disguise: uid 0, primary or supplementary gid 0, or a member of a
group that grants root-equivalent access (sudo, disk, docker, shadow ...), unless the Borglet
was started with `--allow-root-tasks`. The policy is checked when the Borglet starts (for its
own list), when a task starts, and before every exec health check, so a refused account
never runs anything.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

PRIVILEGED_GROUPS = ("root", "sudo", "wheel", "adm", "disk", "docker", "lxd", "shadow")
"""Groups whose members can read or become root (disks, the docker socket, /etc/shadow ...)."""


class AccountError(Exception):
    """A `run_as` account this machine will not run tasks as; the message says why."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def lookup(name: str) -> Account:
    """The account's uid, primary gid and every group it is in."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise AccountError(f"unix account {name!r} does not exist on this machine") from None
    try:
        groups = tuple(sorted(set(os.getgrouplist(name, pw.pw_gid))))
    except OSError:
        groups = (pw.pw_gid,)
    return Account(name=name, uid=pw.pw_uid, gid=pw.pw_gid, groups=groups)


def lookup_quiet(name: str) -> Account | None:
    """`lookup`, or None for an account that does not exist."""
    try:
        return lookup(name)
    except AccountError:
        return None


def _privileged_gids() -> dict[int, str]:
    out: dict[int, str] = {0: "gid 0"}
    for g in PRIVILEGED_GROUPS:
        try:
            out.setdefault(grp.getgrnam(g).gr_gid, f"group {g!r}")
        except KeyError:
            continue
    return out


def privilege(account: Account) -> str:
    """Why the account is root-equivalent ('uid 0', "group 'sudo'" ...), or '' when it is not."""
    if account.uid == 0:
        return "uid 0"
    privileged = _privileged_gids()
    for gid in (account.gid, *account.groups):
        if gid in privileged:
            return privileged[gid]
    return ""


def refuse_privileged(account: Account, allow_root: bool) -> Account:
    """The account, or AccountError when it is root-equivalent and `allow_root` is off."""
    why = "" if allow_root else privilege(account)
    if why:
        raise AccountError(
            f"account {account.name!r} is privileged ({why}): tasks may run as it only on a "
            "Borglet started with --allow-root-tasks"
        )
    return account


@dataclass(frozen=True)
class TaskAccounts:
    """The policy: `allowed` accounts (the default one included), root-equivalent ones only
    with `allow_root`."""

    default: str
    allowed: tuple[str, ...]
    allow_root: bool = False

    @classmethod
    def of(cls, default: str, extra: list[str] | tuple[str, ...], allow_root: bool) -> TaskAccounts:
        names = [default, *(n for n in extra if n != default)]
        return cls(default=default, allowed=tuple(dict.fromkeys(names)), allow_root=allow_root)

    def resolve(self, name: str = "") -> Account:
        """The account a task asking for `name` ('' = the default) runs as; AccountError
        (naming the account and the reason) when this machine refuses it."""
        name = name or self.default
        if name not in self.allowed:
            raise AccountError(
                f"account {name!r} is not allowed on this machine "
                f"(--task-users: {', '.join(self.allowed)})"
            )
        return refuse_privileged(lookup(name), self.allow_root)

    def check_all(self) -> None:
        """At start: every listed account exists and is acceptable (AccountError otherwise)."""
        for name in self.allowed:
            self.resolve(name)
