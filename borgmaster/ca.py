"""The cell's certificate authority: `borgmaster ca init` and `borgmaster ca issue`.

One CA per cell (EC P-256). Every certificate it issues names its holder (CN), its role (OU,
and the SAN `ROLE.role.borgcell` that programs check, see cfg/tls.py) and, with `--host`, the
addresses it serves on. Keys are written 0600 and never leave the directory they are made in.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cfg.tls import CA_FILE, CERT_FILE, KEY_FILE, NAME_RE, Role, machine_host, role_host

CA_KEY = "ca.key"
CA_DAYS = 3650
CERT_DAYS = 365


class CaError(Exception):
    """A one-line reason `ca init`/`ca issue` cannot go on."""


@dataclass(frozen=True)
class Issued:
    out: str
    name: str
    role: Role
    not_after: dt.datetime


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_ca(directory: str, cell: str = "borgcell", days: int = CA_DAYS) -> str:
    """Create DIR/ca.crt and DIR/ca.key; refuse to overwrite an existing CA."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.exists(os.path.join(directory, CA_KEY)):
        raise CaError(f"{directory}: a CA is already there (ca.key exists)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cell),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{cell} cell CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write(os.path.join(directory, CA_KEY), _key_pem(key), 0o600)
    _write(os.path.join(directory, CA_FILE), cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return os.path.join(directory, CA_FILE)


def _load_ca(directory: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bytes]:
    try:
        with open(os.path.join(directory, CA_FILE), "rb") as f:
            ca_pem = f.read()
        with open(os.path.join(directory, CA_KEY), "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise CaError(f"{directory}: no CA here ({e.strerror}); run `borgmaster ca init`")
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{directory}/{CA_KEY}: not an EC key")
    return x509.load_pem_x509_certificate(ca_pem), key, ca_pem


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def issue(
    ca_dir: str,
    role: Role | str,
    name: str,
    out: str,
    hosts: tuple[str, ...] | list[str] = (),
    days: int = CERT_DAYS,
    not_before: dt.datetime | None = None,
) -> Issued:
    """Sign a certificate for (name, role) into OUT/{ca.crt,tls.crt,tls.key}.

    `not_before` exists for tests of expired certificates (validity = [not_before,
    not_before + days])."""
    try:
        role = Role(role)
    except ValueError:
        raise CaError(f"--role: {role!r} is not one of {', '.join(r.value for r in Role)}")
    if not NAME_RE.match(name):
        raise CaError(f"--name: {name!r} must be lower case letters, digits, '.', '_' or '-'")
    if days < 1:
        raise CaError("--days: must be at least 1")
    ca_cert, ca_key, ca_pem = _load_ca(ca_dir)
    cell = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(role_host(role))]
    if role is Role.BORGLET:
        sans.append(x509.DNSName(machine_host(name)))
    for h in hosts:
        if h:
            sans.append(_san(h))
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days)
    subject = x509.Name(
        [
            *([x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(cell[0].value))] if cell else []),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role in (Role.MASTER, Role.BORGLET):
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    os.makedirs(out, mode=0o700, exist_ok=True)
    _write(os.path.join(out, KEY_FILE), _key_pem(key), 0o600)
    _write(os.path.join(out, CERT_FILE), cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(os.path.join(out, CA_FILE), ca_pem, 0o644)
    return Issued(out=out, name=name, role=role, not_after=end)


def ensure_dev_certs(tls_root: str, cell: str, user: str, machines: list[str]) -> dict[str, str]:
    """The dev cell's CA and certificates under TLS_ROOT (made once, reused after): one for
    the master, one per Borglet, and an admin certificate named after the login user.
    Returns {"master": dir, "admin": dir, "borglet:NAME": dir}."""
    ca_dir = os.path.join(tls_root, "ca")
    if not os.path.exists(os.path.join(ca_dir, CA_KEY)):
        init_ca(ca_dir, cell)
    hosts = ("127.0.0.1", "localhost", "::1")
    wanted: dict[str, tuple[Role, str, tuple[str, ...]]] = {
        "master": (Role.MASTER, "dev", hosts),
        "admin": (Role.ADMIN, user, ()),
    }
    for m in machines:
        wanted[f"borglet:{m}"] = (Role.BORGLET, m, hosts)
    out = {}
    for key, (role, name, hs) in wanted.items():
        d = os.path.join(tls_root, key.replace(":", "-"))
        if not _still_valid(d, name):
            issue(ca_dir, role, name, d, hs)
        out[key] = d
    return out


def _still_valid(d: str, name: str) -> bool:
    """Whether D holds a certificate for `name` that is valid for another day."""
    try:
        with open(os.path.join(d, CERT_FILE), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return False
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return bool(cn) and cn[0].value == name and left > dt.timedelta(days=1)
