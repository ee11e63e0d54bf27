"""The Borglet's run_as policy (borglet/accounts.py): only allowed accounts, never a
root-equivalent one without --allow-root-tasks. End to end: tests/integration/test_hostile_*.py."""

from __future__ import annotations

import grp

import pytest

from borglet.accounts import Account, AccountError, TaskAccounts, privilege

# ----- run_as policy ----------------------------------------------------------------------


def test_only_listed_accounts_are_allowed_and_the_default_always_is() -> None:
    policy = TaskAccounts.of("nobody", ["daemon"], allow_root=False)
    assert policy.allowed == ("nobody", "daemon")
    assert policy.resolve("").name == "nobody"
    assert policy.resolve("daemon").uid == 1
    with pytest.raises(AccountError, match="'bin' is not allowed on this machine"):
        policy.resolve("bin")


def test_root_and_root_equivalent_accounts_are_refused_without_allow_root() -> None:
    with pytest.raises(AccountError, match=r"'root' is privileged \(uid 0\)"):
        TaskAccounts.of("nobody", ["root"], allow_root=False).resolve("root")
    assert TaskAccounts.of("nobody", ["root"], allow_root=True).resolve("root").uid == 0
    with pytest.raises(AccountError, match="privileged"):
        TaskAccounts.of("root", [], allow_root=False).check_all()


@pytest.mark.parametrize("group", ["disk", "sudo", "adm", "shadow"])
def test_members_of_privileged_groups_are_root_equivalent(group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        pytest.skip(f"no group {group} here")
    member = Account(name="x", uid=1234, gid=1234, groups=(1234, gid))
    assert privilege(member) == f"group '{group}'"
    assert privilege(Account(name="x", uid=1234, gid=gid, groups=())) == f"group '{group}'"
    assert privilege(Account(name="x", uid=1234, gid=0, groups=())) == "gid 0"
    assert privilege(Account(name="x", uid=1234, gid=1234, groups=(1234,))) == ""


def test_an_unknown_account_is_refused_with_its_name() -> None:
    with pytest.raises(AccountError, match="'no-such-account' does not exist"):
        TaskAccounts.of("nobody", ["no-such-account"], False).resolve("no-such-account")
