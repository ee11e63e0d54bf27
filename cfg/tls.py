"""Who is calling: the cell's certificates, roles and identities (SPEC part 2, "Cell CA and
mutual TLS"), shared by the three programs.

A certificate names its holder in the subject CN and its role twice: in the subject OU (for
people reading it) and as a SAN DNS name `ROLE.role.borgcell`, which is what every program
checks. The SAN form lets a client verify that the server it dialled is a master (or a
Borglet) by TLS hostname verification alone (`ssl_target_name_override` in gRPC,
`server_hostname` in `ssl`), without parsing certificates itself. A Borglet's certificate
also carries `NAME.machine.borgcell`, so a master reading a machine's logs knows it reached
that machine, not merely some Borglet.

This module loads no gRPC and no `cryptography` (borgcfg imports it on every command).
"""

from __future__ import annotations

import json
import os
import re
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cfg.errors import ConfigError

ROLE_SUFFIX = ".role.borgcell"
MACHINE_SUFFIX = ".machine.borgcell"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
"""Certificate names: users, machines and replicas (lower case, as DNS labels allow)."""

TLS_ENV = "BORG_TLS_DIR"
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    READER = "reader"
    BORGLET = "borglet"
    MASTER = "master"
    HOLLOW = "hollow"
    """A `borglet hollow` process (simulated machines for scale tests): it may sync only as
    machines named after its certificate (`check_machine` in borgmaster/auth.py)."""


def role_host(role: Role) -> str:
    """The SAN that marks `role` (and the TLS server name a client expects of it)."""
    return f"{role.value}{ROLE_SUFFIX}"


def machine_host(machine: str) -> str:
    """The SAN that marks a Borglet certificate as machine `machine`'s."""
    return f"{machine.lower()}{MACHINE_SUFFIX}"


@dataclass(frozen=True)
class Identity:
    """A verified caller: the certificate's name and role. `via` names the master replica
    that relayed the call on the caller's behalf (a follower forwarding to the leader)."""

    name: str
    role: Role
    via: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def __str__(self) -> str:
        return self.name


INSECURE = Identity(name="", role=Role.ADMIN)
"""The caller of a cell started without `--tls-dir`: nobody is authenticated, so every caller
may do everything and `--user` is taken at its word (the first release's behaviour)."""


def identity_from_names(common_names: list[str], sans: list[str]) -> Identity | None:
    """The identity a verified certificate states, or None when it states none or several
    roles (such a certificate was not issued by `borgmaster ca issue`)."""
    roles = [s[: -len(ROLE_SUFFIX)] for s in sans if s.endswith(ROLE_SUFFIX)]
    if len(roles) != 1 or len(common_names) != 1:
        return None
    try:
        role = Role(roles[0])
    except ValueError:
        return None
    name = common_names[0]
    if not NAME_RE.match(name):
        return None
    return Identity(name=name, role=role)


def identity_from_peercert(cert: dict[str, Any] | None) -> Identity | None:
    """The identity of an `ssl` peer certificate (`SSLSocket.getpeercert()`), verified by the
    handshake against the cell CA."""
    if not cert:
        return None
    cns = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    sans = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    return identity_from_names(cns, sans)


@dataclass(frozen=True)
class TlsDir:
    """A directory made by `borgmaster ca issue`: the cell CA and one certificate and key."""

    path: str
    ca: bytes
    cert: bytes
    key: bytes

    @property
    def ca_file(self) -> str:
        return os.path.join(self.path, CA_FILE)

    @property
    def cert_file(self) -> str:
        return os.path.join(self.path, CERT_FILE)

    @property
    def key_file(self) -> str:
        return os.path.join(self.path, KEY_FILE)

    @classmethod
    def load(cls, path: str) -> TlsDir:
        """Read the three files; a missing or unreadable one is a one-line ConfigError."""
        parts = []
        for name in (CA_FILE, CERT_FILE, KEY_FILE):
            p = os.path.join(path, name)
            try:
                with open(p, "rb") as f:
                    data = f.read(1 << 20)
            except OSError as e:
                raise ConfigError(f"--tls-dir {path}: cannot read {name}: {e.strerror}") from None
            if b"-----BEGIN " not in data:
                raise ConfigError(f"--tls-dir {path}: {name} is not PEM")
            parts.append(data)
        return cls(path=path, ca=parts[0], cert=parts[1], key=parts[2])

    def server_context(self) -> ssl.SSLContext:
        """HTTPS: the cell's certificate; a client certificate is asked for, not required
        (`/healthz` and `/readyz` stay open; every other page checks the identity)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.load_verify_locations(cadata=self.ca.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """HTTPS client with this certificate, trusting only the cell CA; the caller passes
        the expected role/machine host (`role_host`, `machine_host`) as `server_hostname`."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=self.ca.decode())
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def cert_identity(cert_file: str) -> Identity | None:
    """The identity a certificate file states (not verified: for a client naming itself).

    Read with the `ssl` module's own decoder (1 ms) rather than `cryptography` (70 ms to
    import), falling back to `cryptography` should a Python lack the decoder."""
    try:
        decoded = ssl._ssl._test_decode_cert(cert_file)  # type: ignore[attr-defined]
    except AttributeError:
        from cryptography import x509

        with open(cert_file, "rb") as f:
            c = x509.load_pem_x509_certificate(f.read())
        cns = [str(a.value) for a in c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        try:
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            sans = [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            sans = []
        return identity_from_names(cns, sans)
    except (OSError, ValueError, ssl.SSLError):
        return None
    return identity_from_peercert(decoded)


def tls_dir_arg(value: str | None) -> str | None:
    """`--tls-dir` or, when absent, `$BORG_TLS_DIR` (empty means none)."""
    return value or os.environ.get(TLS_ENV) or None


# ----- the dev cell's certificates, found by borgcfg without flags -----------------------


def _config_home() -> str:
    return os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")


def dev_cells_file() -> str:
    """Where `borgmaster dev` records, per gRPC address, the client certificate it made."""
    return os.path.join(_config_home(), "borgcell", "dev-cells.json")


def dev_tls_dir(masters: list[str]) -> str | None:
    """The client TLS dir of the dev cell listening at `masters` (one address), if one is
    recorded and still there; else None (plaintext, or the caller's explicit --tls-dir)."""
    if len(masters) != 1:
        return None
    try:
        with open(dev_cells_file()) as f:
            known = json.load(f)
    except (OSError, ValueError):
        return None
    path = known.get(masters[0]) if isinstance(known, dict) else None
    if isinstance(path, str) and os.path.isfile(os.path.join(path, CERT_FILE)):
        return path
    return None


def record_dev_cell(address: str, tls_dir: str) -> None:
    """Note (atomically) that the dev cell at `address` trusts the client cert in `tls_dir`."""
    path = dev_cells_file()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        with open(path) as f:
            known = json.load(f)
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    known[address] = os.path.abspath(tls_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(known, f, indent=1)
    os.replace(tmp, path)
