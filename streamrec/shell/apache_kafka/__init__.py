"""Apache Kafka from its Maven Central jars: one pinned version, each node's config, format, command line.

The jars are fetched once with Maven (``pom.xml`` beside this file names the version) into a cache folder
and used offline afterwards. A node runs in KRaft combined mode (broker and controller in one JVM);
``n`` nodes form one cluster on loopback whose controller quorum is all of them. Nothing here starts a
long-lived process: :mod:`streamrec.shell.stack` does that.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from streamrec._exceptions import StackError
from streamrec.config import Settings

__all__ = ["VERSION", "MIN_JAVA", "cache_dir", "java_binary", "ensure_jars", "server_properties",
           "controller_port", "write_properties", "format_storage", "pristine_storage", "prepare_nodes",
           "node_argv", "new_cluster_id"]

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"
MIN_JAVA = 17  # Kafka 4's brokers need Java 17
MAIN_CLASS = "kafka.Kafka"
# Sized for a 2-core laptop: a development node holds little, and three of them must fit beside the rest.
JVM_FLAGS = ("-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
             "-Djava.awt.headless=true")
FETCH_TIMEOUT_S = 600.0
_MARKER = ".complete"  # written last into the jar folder: its presence means every jar is there


def _pom_version() -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    found = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    if found is None or not found.text:
        raise StackError(f"{POM} names no kafka.version")
    return found.text.strip()


VERSION = _pom_version()


def cache_dir(settings: Settings) -> Path:
    """Where the jars live: STREAMREC_KAFKA_CACHE, else ``<stack_dir>/kafka-<version>``."""
    return (settings.kafka_cache_dir or settings.stack_dir / f"kafka-{VERSION}").resolve()


# ---- tools ---------------------------------------------------------------------------------------
def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH, checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    hint = (f"install Java {MIN_JAVA} or newer (e.g. `apt install openjdk-17-jre-headless`) or use the default "
            f"broker (--broker tansu)")
    if java is None:
        raise StackError(f"Apache Kafka {VERSION} needs `java` ≥ {MIN_JAVA} and none is on PATH: {hint}")
    major = _java_major(java)
    if major is None or major < MIN_JAVA:
        found = f"Java {major}" if major else "a Java whose version could not be read"
        raise StackError(f"Apache Kafka {VERSION} needs Java ≥ {MIN_JAVA}, {java} is {found}: {hint}")
    return os.path.realpath(java)


def _java_major(java: str) -> int | None:
    # The JDK's `release` file answers without starting a JVM (~0.1 s saved per `stack up`).
    release = Path(os.path.realpath(java)).parent.parent / "release"
    try:
        text = release.read_text()
    except OSError:
        try:
            text = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
        except (OSError, subprocess.SubprocessError):
            return None
    match = re.search(r'version "?(\d+)(?:\.(\d+))?', text.replace("JAVA_VERSION=", 'version '))
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


# ---- jars ----------------------------------------------------------------------------------------
def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _complete(libs: Path) -> bool:
    try:
        marker = json.loads((libs / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("pom") == _pom_digest() and all((libs / jar).is_file() for jar in marker.get("jars", []))


def ensure_jars(settings: Settings) -> Path:
    """The folder of Kafka's jars, fetched with Maven the first time (never again once complete)."""
    cache = cache_dir(settings)
    libs = cache / "libs"
    if _complete(libs):
        return libs
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `stack up`s at once: the second waits, then finds the jars
        if not _complete(libs):
            _fetch(cache, libs)
    return libs


def _fetch(cache: Path, libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(f"Apache Kafka {VERSION}'s jars are not in {libs} yet and fetching them needs Maven: "
                         f"install it (e.g. `apt install maven`) or use the default broker (--broker tansu)")
    staging = cache / f"libs.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    log = cache / "mvn.log"
    # The pom is copied next to the cache: Maven may write beside its pom, and the package may be read-only.
    pom = cache / "pom.xml"
    shutil.copyfile(POM, pom)
    argv = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime"]
    started = time.monotonic()
    try:
        with open(log, "w") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=FETCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"fetching Apache Kafka {VERSION}'s jars took over {FETCH_TIMEOUT_S:.0f}s — "
                         f"see {log}") from exc
    jars = sorted(p.name for p in staging.glob("*.jar")) if staging.is_dir() else []
    if done.returncode != 0 or not any(j.startswith(f"kafka_2.13-{VERSION}") for j in jars):
        tail = [line for line in log.read_text(errors="replace").splitlines() if "ERROR" in line][:1]
        raise StackError(f"Maven could not fetch Apache Kafka {VERSION}'s jars ({tail[0].strip() if tail else 'exit '}"
                         f"{'' if tail else done.returncode}) — see {log}")
    (staging / _MARKER).write_text(json.dumps({"pom": _pom_digest(), "jars": jars, "version": VERSION,
                                               "fetch_s": round(time.monotonic() - started, 1)}))
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)


# ---- node configuration ----------------------------------------------------------------------------
def controller_port(settings: Settings, node: int) -> int:
    """Node ``node``'s controller port: after every client port (9092 → 9093 for one node, 9095-9097 for 3)."""
    return settings.embedded_kafka_port + settings.kafka_brokers + node


def server_properties(settings: Settings, node: int, log_dir: Path) -> dict[str, str]:
    """The server.properties of node ``node`` (0-based) of the embedded cluster, as key → value."""
    n = settings.kafka_brokers
    client = settings.embedded_kafka_ports[node]
    replicas, min_isr = settings.topic_replication, settings.topic_min_insync
    voters = ",".join(f"{i}@127.0.0.1:{controller_port(settings, i)}" for i in range(n))
    return {
        "node.id": str(node),
        "process.roles": "broker,controller",
        "listeners": f"PLAINTEXT://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller_port(settings, node)}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{client}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        # A static quorum: every node votes. Simpler than a dynamic one and enough for loopback.
        "controller.quorum.voters": voters,
        "log.dirs": str(log_dir),
        "num.partitions": str(settings.topic_partitions),
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "auto.create.topics.enable": "false",  # a typo in a topic name is an error, as on Tansu
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": str(settings.topic_partitions),  # default 50: slow to create on 2 cores
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": str(settings.topic_partitions),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "group.initial.rebalance.delay.ms": "0",  # a dev group should start at once, not after 3 s
        # Small files: tests make hundreds of topics; the defaults (1 GiB segments, 10 MB indexes) cost disk.
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.index.size.max.bytes": str(1024 * 1024),
        "log.retention.hours": "24",
        "log.retention.bytes": str(256 * 1024 * 1024),
        "log.retention.check.interval.ms": "60000",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        **(_secured(settings, node, client) if settings.stack_secure else {}),
    }


def _secured(settings: Settings, node: int, client: int) -> dict[str, str]:
    from streamrec.shell import secure

    return secure.kafka_properties(secure.files(settings), f"127.0.0.1:{client}", f"127.0.0.1:{client}",
                                   f"127.0.0.1:{controller_port(settings, node)}")


def write_properties(props: dict[str, str], path: Path) -> Path:
    """Write ``props`` as a Java properties file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600 from the start: a secured node's config holds its inter-broker password
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as `kafka-storage random-uuid`),
    never starting with "-" (Kafka's own Uuid.randomUuid rule: `format -t -abc…` reads it as an option; one
    id in 64 failed the format that way)."""
    while True:
        found = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not found.startswith("-"):
            return found


def _jvm(java: str, libs: Path) -> list[str]:
    return [java, *JVM_FLAGS, f"-Dlog4j2.configurationFile={LOG4J}", "-cp", f"{libs}/*"]


def format_storage(java: str, libs: Path, configs: list[Path], cluster_id: str, log: Path,
                   extra: tuple[str, ...] = ()) -> None:
    """Format each node's log directory for one cluster (the nodes formatted side by side); ``extra``
    arguments go to each ``format`` (the secured stack's SCRAM users)."""
    with open(log, "ab") as out:
        procs = [subprocess.Popen([*_jvm(java, libs), "kafka.tools.StorageTool", "format", "-t", cluster_id,
                                   "-c", str(c), "--ignore-formatted", *extra], stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) for c in configs]
        codes = [p.wait(timeout=120) for p in procs]
    if any(codes):
        raise StackError(f"formatting Kafka's storage failed (exit {max(codes)}) — see {log}")


def _formatted(root: Path) -> bool:
    try:  # a cache shared across versions (STREAMREC_KAFKA_CACHE) must not hand 4.1's storage to 4.2
        return json.loads((root / _MARKER).read_text()).get("version") == VERSION
    except (OSError, ValueError):
        return False


def pristine_storage(settings: Settings, java: str, libs: Path) -> list[Path]:
    """Formatted, empty log directories for each node of an n-node cluster, made once per cache.

    Formatting costs a JVM per node (7 s for three on two cores); a copy of the result costs nothing.
    The result names node ids and a cluster id, never ports or paths (the quorum is static), so every
    cluster of n nodes can start from a copy.
    """
    n = settings.kafka_brokers
    root = cache_dir(settings) / f"storage-{n}"
    nodes = [root / f"node-{i}" for i in range(n)]
    if _formatted(root):
        return nodes
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _formatted(root):
            shutil.rmtree(root, ignore_errors=True)
            configs = [write_properties(server_properties(settings, i, node), root / f"node-{i}.properties")
                       for i, node in enumerate(nodes)]
            format_storage(java, libs, configs, new_cluster_id(), root / "format.log")
            (root / _MARKER).write_text(json.dumps({"version": VERSION, "brokers": n}))
    return nodes


def prepare_nodes(settings: Settings, homes: dict[int, Path], java: str, libs: Path) -> list[Path]:
    """Write the config of each node ``i`` into ``homes[i]``; return the config paths in that order.

    When ``homes`` is the whole cluster it starts from a copy of :func:`pristine_storage` (empty, like
    Tansu); a node restarted beside running ones keeps the storage it has.
    """
    everything = sorted(homes) == list(range(settings.kafka_brokers))
    if everything and settings.stack_secure:
        return _formatted_secure(settings, homes, java, libs)
    pristine = pristine_storage(settings, java, libs) if everything else []
    configs = []
    for node, home in homes.items():
        if everything:
            shutil.rmtree(home / "data", ignore_errors=True)
            shutil.copytree(pristine[node], home / "data")
        elif not (home / "data" / "meta.properties").exists():
            raise StackError(f"Kafka node {node} lost its storage while the rest of the cluster runs: "
                             f"`streamrec stack down`, then `up`")
        configs.append(write_properties(server_properties(settings, node, home / "data"), home / "server.properties"))
    return configs


def _formatted_secure(settings: Settings, homes: dict[int, Path], java: str, libs: Path) -> list[Path]:
    """The secured cluster's storage, formatted for it alone: its metadata holds this stack's SCRAM users,
    so no pristine copy can serve it (one JVM per node, ~3 s)."""
    from streamrec.shell import secure

    configs = []
    for node, home in homes.items():
        shutil.rmtree(home / "data", ignore_errors=True)
        configs.append(write_properties(server_properties(settings, node, home / "data"), home / "server.properties"))
    format_storage(java, libs, configs, new_cluster_id(), settings.stack_dir / "kafka-format.log",
                   tuple(secure.scram_arguments(secure.files(settings))))
    return configs


def node_argv(java: str, libs: Path, config: Path) -> list[str]:
    """The command line of one node; it names ``kafka.Kafka`` and ``config`` (what `down` checks)."""
    return [*_jvm(java, libs), MAIN_CLASS, str(config)]
