"""Local single-node Apache Kafka broker (KRaft) assembled from Maven Central jars.

The jars are fetched once by Maven into a cache outside the repository; each broker keeps its
configuration, storage, logs and a `broker.json` state file (pid, ports, cluster id) in one data
directory, so a restart on the same directory reuses the same cluster id and ports.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from txguard.child_process import tied_command
from txguard.config import Settings

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
MIN_JAVA_VERSION = 17
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093

STATE_FILE = "broker.json"
_COMPLETE_MARKER = ".txguard-complete"
_SERVER_PROPERTIES = "server.properties"
_LOG4J2_PROPERTIES = "log4j2.properties"
_CONSOLE_LOG = "broker.out"
_LOCK_FILE = ".broker.lock"
# Kafka's own KAFKA_JVM_PERFORMANCE_OPTS from kafka-run-class.sh.
_JVM_PERFORMANCE_OPTS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
_JAVA_HINT = (
    "install a JDK (e.g. apt-get install openjdk-17-jre-headless) "
    "or set TXGUARD_KAFKA_BOOTSTRAP to an existing cluster"
)


class KafkaSetupError(RuntimeError):
    """A prerequisite of the local broker (Java 17+, Maven, jars) is missing; says what to do."""


class KafkaFetchError(RuntimeError):
    """Maven ran but could not fetch the broker jars."""


class BrokerStartError(RuntimeError):
    """The broker process failed or did not become ready; the message ends with the log tail."""


# ---------------------------------------------------------------------------------------------
# Jars


def deploy_dir() -> Path:
    """`deploy/kafka` of the source checkout that this package is installed from."""
    return Path(__file__).resolve().parents[3] / "deploy" / "kafka"


def kafka_libs_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the broker jars live: TXGUARD_KAFKA_LIBS, else $XDG_CACHE_HOME/txguard/kafka-V/libs."""
    env = os.environ if env is None else env
    override = env.get("TXGUARD_KAFKA_LIBS", "").strip()
    if override:
        return Path(override).expanduser().resolve()
    cache = env.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache) if cache else Path.home() / ".cache"
    return (base / "txguard" / f"kafka-{KAFKA_VERSION}" / "libs").resolve()


def libs_ready(libs_dir: Path) -> bool:
    """True when a completed fetch (or a Kafka distribution's libs folder) is present."""
    if (libs_dir / _COMPLETE_MARKER).is_file():
        return True
    # A hand-provided libs folder (e.g. from the release tarball) has no marker but has the jar.
    return any(libs_dir.glob("kafka_2.13-*.jar"))


def find_java(env: Mapping[str, str] | None = None) -> str | None:
    """The `java` executable: $JAVA_HOME/bin/java first, as Kafka's own scripts do, then PATH."""
    env = os.environ if env is None else env
    java_home = env.get("JAVA_HOME", "").strip()
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java", path=env.get("PATH", os.defpath))


def parse_java_version(output: str) -> int | None:
    """Major version from `java -version` output (`1.8.0_x` is 8, `17.0.15` is 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        return int(match.group(2))
    return major


def require_java(env: Mapping[str, str] | None = None) -> str:
    """Path of a Java 17+ runtime, or KafkaSetupError with an actionable message."""
    java = find_java(env)
    if java is None:
        raise KafkaSetupError(
            f"Java {MIN_JAVA_VERSION}+ is required to run the local Kafka broker but `java` "
            f"was not found; {_JAVA_HINT}"
        )
    try:
        probe = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaSetupError(f"could not run `{java} -version` ({exc}); {_JAVA_HINT}") from exc
    version = parse_java_version(probe.stderr + probe.stdout)
    if version is None or version < MIN_JAVA_VERSION:
        found = "an unrecognised version" if version is None else f"Java {version}"
        raise KafkaSetupError(
            f"Java {MIN_JAVA_VERSION}+ is required to run the local Kafka broker, "
            f"but {java} is {found}; {_JAVA_HINT}"
        )
    return java


def require_maven(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    mvn = shutil.which("mvn", path=env.get("PATH", os.defpath))
    if mvn is None:
        raise KafkaSetupError(
            "Maven (`mvn`) is required to fetch the Kafka broker jars from Maven Central; "
            "install it (e.g. apt-get install maven), point TXGUARD_KAFKA_LIBS at a folder of "
            "Kafka jars, or set TXGUARD_KAFKA_BOOTSTRAP to an existing cluster"
        )
    return mvn


def fetch_kafka_libs(libs_dir: Path | None = None, *, timeout: float = 1800.0) -> Path:
    """Download the broker jars once; idempotent, and an interrupted fetch leaves no half cache."""
    libs_dir = kafka_libs_dir() if libs_dir is None else libs_dir
    if libs_ready(libs_dir):
        return libs_dir
    require_java()
    mvn = require_maven()
    pom = deploy_dir() / "pom.xml"
    if not pom.is_file():
        raise KafkaSetupError(
            f"{pom} not found: fetching the broker jars needs a txguard source checkout "
            "(pip install -e .); alternatively set TXGUARD_KAFKA_LIBS to a folder of Kafka jars"
        )
    if libs_dir.exists() and not (libs_dir.is_dir() and not any(libs_dir.iterdir())):
        # Never delete a user's folder: only an empty one is replaced by the fetch.
        raise KafkaSetupError(
            f"{libs_dir} exists but holds no Kafka jars; remove it or point "
            "TXGUARD_KAFKA_LIBS at another folder"
        )
    libs_dir.parent.mkdir(parents=True, exist_ok=True)
    # Fetch into a sibling temp dir and rename: the rename is atomic, so readers see all or nothing.
    staging = Path(tempfile.mkdtemp(prefix=f".{libs_dir.name}-", dir=libs_dir.parent))
    try:
        command = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        log.debug("fetching Kafka jars: %s", " ".join(command))
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaFetchError(f"Maven did not finish fetching within {timeout:.0f} s") from exc
        if result.returncode != 0:
            tail = _tail_text(result.stdout + result.stderr, 20)
            raise KafkaFetchError(
                f"Maven could not fetch the Kafka jars (exit {result.returncode}):\n{tail}"
            )
        jars = sorted(p.name for p in staging.glob("*.jar"))
        for required in (f"kafka_2.13-{KAFKA_VERSION}.jar", "log4j-slf4j-impl-"):
            if not any(name.startswith(required) for name in jars):
                raise KafkaFetchError(f"Maven finished but {required}* is missing from {staging}")
        (staging / _COMPLETE_MARKER).write_text("\n".join(jars) + "\n", encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is ordinary user data.
        if libs_dir.is_dir() and not any(libs_dir.iterdir()):
            libs_dir.rmdir()  # An empty folder (e.g. made for TXGUARD_KAFKA_LIBS) is replaced.
        try:
            staging.rename(libs_dir)
        except OSError:
            if not libs_ready(libs_dir):  # Lost a race only if the winner completed.
                raise
        return libs_dir
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Broker state


@dataclass(frozen=True)
class BrokerState:
    """Contents of `<data_dir>/broker.json`; `pid` is None once the broker has been stopped."""

    pid: int | None
    port: int
    controller_port: int
    cluster_id: str | None
    kafka_version: str
    started_at: str | None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def read_broker_state(data_dir: Path) -> BrokerState | None:
    """The recorded state of the broker in `data_dir`, or None if there is none (or unreadable)."""
    try:
        raw: dict[str, Any] = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
        return BrokerState(
            pid=int(raw["pid"]) if raw.get("pid") is not None else None,
            port=int(raw["port"]),
            controller_port=int(raw["controller_port"]),
            cluster_id=raw.get("cluster_id"),
            kafka_version=str(raw.get("kafka_version", KAFKA_VERSION)),
            started_at=raw.get("started_at"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_broker_bootstrap(data_dir: Path) -> str | None:
    """Bootstrap address of the live broker recorded in `data_dir`, else None."""
    state = read_broker_state(data_dir)
    if state is None or state.pid is None:
        return None
    if not _is_broker_process(state.pid, data_dir.resolve() / _SERVER_PROPERTIES):
        return None
    return state.bootstrap


def _write_broker_state(data_dir: Path, state: BrokerState) -> None:
    payload = asdict(state) | {"bootstrap": state.bootstrap}
    tmp = data_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, data_dir / STATE_FILE)  # Atomic: a reader never sees half a file.


def _is_broker_process(pid: int, server_properties: Path) -> bool:
    """True if `pid` is alive, not a zombie, and (where /proc exists) runs this broker's config."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # Alive but owned by someone else; identity is checked below.
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():
        return True
    try:
        stat = (proc / "stat").read_text(encoding="utf-8")
        # A zombie is dead; it lingers only because its parent has not reaped it yet.
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # Guards against pid reuse: the recorded pid must still be a kafka.Kafka with our config.
    return b"kafka.Kafka" in cmdline and str(server_properties).encode() in cmdline


# ---------------------------------------------------------------------------------------------
# Ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the JVM sets on its server sockets, so TIME_WAIT leftovers do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _two_free_ports() -> tuple[int, int]:
    # Both sockets are held open together so the kernel cannot hand out the same port twice.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second,
    ):
        first.bind(("127.0.0.1", 0))
        second.bind(("127.0.0.1", 0))
        return first.getsockname()[1], second.getsockname()[1]


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The broker


class LocalBroker:
    """One single-node KRaft broker (broker + controller roles) bound to 127.0.0.1.

    Ports: explicit arguments win; otherwise the ports recorded in `broker.json` (a restart keeps
    them); otherwise two free ports. The process runs detached in its own session, so it outlives
    the Python process that started it; `stop()` works from any process via the recorded pid.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        *,
        libs_dir: Path | None = None,
        extra_properties: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.heap = _validate_heap(heap)
        self.libs_dir = kafka_libs_dir() if libs_dir is None else libs_dir
        self.extra_properties = dict(extra_properties or {})
        recorded = read_broker_state(self.data_dir)
        if port is None and controller_port is None and recorded is not None:
            port, controller_port = recorded.port, recorded.controller_port
        if port is None and controller_port is None:
            port, controller_port = _two_free_ports()
        elif port is None or controller_port is None:
            other = free_port()
            port = other if port is None else port
            controller_port = other if controller_port is None else controller_port
        if port == controller_port:
            raise ValueError(f"broker and controller port must differ, both are {port}")
        self.port: int = port
        self.controller_port: int = controller_port
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, heap: str = "512m") -> LocalBroker:
        """The project's broker under `settings.kafka_dir`, on 9092/9093 unless those are busy."""
        data_dir = settings.kafka_dir
        if read_broker_state(data_dir) is not None:
            return cls(data_dir, heap=heap)  # Recorded ports: restarts keep their address.
        port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else None
        controller_port = DEFAULT_CONTROLLER_PORT if port_is_free(DEFAULT_CONTROLLER_PORT) else None
        return cls(data_dir, port, controller_port, heap=heap)

    # -- properties -----------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "data"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def pid(self) -> int | None:
        """Pid of the running broker process, or None."""
        if self._process is not None:
            return self._process.pid if self._process.poll() is None else None
        state = read_broker_state(self.data_dir)
        if state is None or state.pid is None:
            return None
        return state.pid if self._owns(state.pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 90.0, *, tied: bool = False) -> None:
        """Start the broker and wait until it answers metadata requests; no-op if running.

        `tied`: the broker is killed with the process starting it (from its main thread), should
        that one die before calling `stop()`: a broker of one test session or one run, not
        `txguard kafka up`'s.
        """
        if self.is_running():
            return
        # Prerequisites first, so a machine without Java gets the message and no data dir.
        java = require_java()
        if not libs_ready(self.libs_dir):
            raise KafkaSetupError(
                f"Kafka broker jars are not in {self.libs_dir}; run `txguard kafka fetch`"
            )
        with self._locked():
            if self.is_running():
                return
            for port in (self.port, self.controller_port):
                if not port_is_free(port):
                    raise BrokerStartError(
                        f"port {port} on 127.0.0.1 is in use by another process; stop it, or "
                        f"delete {self.data_dir} to start a fresh broker on new ports"
                    )
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(exist_ok=True)
            self._write_config()
            cluster_id = self._format_storage(java)
            began = time.monotonic()
            self._spawn(java, tied=tied)
            assert self._process is not None
            _write_broker_state(
                self.data_dir,
                BrokerState(
                    pid=self._process.pid,
                    port=self.port,
                    controller_port=self.controller_port,
                    cluster_id=cluster_id,
                    kafka_version=KAFKA_VERSION,
                    started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                ),
            )
            try:
                self._wait_ready(began + timeout)
            except BrokerStartError:
                self._terminate(signal.SIGKILL, 10.0)
                raise
            log.debug(
                "Kafka broker pid %d ready at %s after %.1f s",
                self._process.pid,
                self.bootstrap,
                time.monotonic() - began,
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown: SIGTERM, then SIGKILL if still alive after `timeout` seconds."""
        with self._locked():
            self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the broker (no controlled shutdown), as a crash would; for fault tests."""
        with self._locked():
            self._terminate(signal.SIGKILL, 10.0)

    # -- internals ------------------------------------------------------------------------

    def _owns(self, pid: int) -> bool:
        return _is_broker_process(pid, self.data_dir / _SERVER_PROPERTIES)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Serialises start/stop of one data dir across processes (two `txguard kafka up` at once).
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / _LOCK_FILE, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _server_properties(self) -> dict[str, str]:
        controller = f"127.0.0.1:{self.controller_port}"
        listeners = f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://{controller}"
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": listeners,
            "advertised.listeners": listeners,
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.storage_dir),
            # Topics are created with explicit configs by `txguard kafka up`; a typo must fail.
            "auto.create.topics.enable": "false",
            "num.partitions": "6",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            # Fewer internal partitions than the default 50: quicker first group on a laptop.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a SIGKILL the restarted node waits for its old registration to expire
            # (DuplicateBrokerRegistration); 6 s instead of 9 s shortens every crash test.
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "6000",
            # Laptop sizing: 2 cores, one disk.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "2",
            "log.retention.hours": "168",
            "log.segment.bytes": str(128 * 1024 * 1024),
            "log.retention.check.interval.ms": "300000",
        }
        properties.update(self.extra_properties)
        return properties

    def _write_config(self) -> None:
        lines = [
            "# Written by txguard (txguard.kafka.broker) on every start; edits are overwritten.",
            *(f"{key}={value}" for key, value in self._server_properties().items()),
        ]
        (self.data_dir / _SERVER_PROPERTIES).write_text("\n".join(lines) + "\n", encoding="utf-8")
        source = deploy_dir() / _LOG4J2_PROPERTIES
        if not source.is_file():
            raise KafkaSetupError(
                f"{source} not found: the local broker needs a txguard source checkout "
                "(pip install -e .), or set TXGUARD_KAFKA_BOOTSTRAP to an existing cluster"
            )
        shutil.copyfile(source, self.data_dir / _LOG4J2_PROPERTIES)

    def _java_command(self, java: str, heap: str, main: str, *args: str) -> list[str]:
        return [
            java,
            f"-Xms{_min_heap(heap, '256m')}",
            f"-Xmx{heap}",
            *_JVM_PERFORMANCE_OPTS,
            f"-Dkafka.logs.dir={self.log_dir}",
            f"-Dlog4j2.configurationFile={self.data_dir / _LOG4J2_PROPERTIES}",
            # Kafka logs its own shutdown; Log4j's hook would close the appenders too early.
            "-Dlog4j2.shutdownHookEnabled=false",
            "-cp",
            f"{self.libs_dir}/*",
            main,
            *args,
        ]

    def _format_storage(self, java: str) -> str:
        """Format storage once; the cluster id then lives in `data/meta.properties`."""
        existing = _read_cluster_id(self.storage_dir)
        if existing is not None:
            return existing
        # Same shape as `StorageTool random-uuid` without paying for a JVM start; like Kafka's
        # own ids it never starts with "-", which the tool's argument parser takes for an option.
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        command = self._java_command(
            java,
            "256m",
            "kafka.tools.StorageTool",
            "format",
            "--standalone",  # Without it a controller with no static voters refuses to format.
            "--ignore-formatted",
            "-t",
            cluster_id,
            "-c",
            str(self.data_dir / _SERVER_PROPERTIES),
        )
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise BrokerStartError(
                f"formatting Kafka storage in {self.storage_dir} failed "
                f"(exit {result.returncode}):\n{_tail_text(result.stdout + result.stderr, 20)}"
            )
        log.debug("formatted Kafka storage: %s", result.stdout.strip())
        return _read_cluster_id(self.storage_dir) or cluster_id

    def _spawn(self, java: str, *, tied: bool) -> None:
        command = self._java_command(
            java, self.heap, "kafka.Kafka", str(self.data_dir / _SERVER_PROPERTIES)
        )
        log.debug("starting Kafka broker: %s", " ".join(command))
        # JVM stdout/stderr (crash reports, early errors) go to broker.out; Kafka logs to logs/.
        with open(self.data_dir / _CONSOLE_LOG, "ab") as console:
            self._process = subprocess.Popen(
                tied_command(command) if tied else command,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # Ctrl-C in the starting terminal must not kill it.
            )

    def _wait_ready(self, deadline: float) -> None:
        from txguard.kafka.clients import make_admin  # lazy: clients imports this module

        assert self._process is not None
        # A TCP connect first keeps librdkafka's connection-refused noise out of the logs.
        while not _accepts_connections(self.port):
            self._check_alive()
            if time.monotonic() >= deadline:
                raise self._start_error("did not open its port")
            time.sleep(0.2)
        with make_admin(self.bootstrap) as admin:
            while True:
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._start_error("did not answer metadata requests")
                try:
                    metadata = admin.list_topics(timeout=min(5.0, max(remaining, 0.5)))
                except KafkaException as exc:
                    log.debug("broker not ready yet: %s", exc)
                    time.sleep(0.2)
                    continue
                if metadata.brokers:
                    return

    def _check_alive(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise self._start_error(f"exited with code {code}")

    def _start_error(self, what: str) -> BrokerStartError:
        tail = self.log_tail()
        return BrokerStartError(
            f"Kafka broker in {self.data_dir} {what} during start-up; "
            f"last log lines ({self.server_log}, {self.data_dir / _CONSOLE_LOG}):\n{tail}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the broker's server log and JVM console output."""
        parts = []
        for path in (self.server_log, self.data_dir / _CONSOLE_LOG):
            with contextlib.suppress(OSError):
                text = _tail_text(path.read_text(encoding="utf-8", errors="replace"), lines)
                if text:
                    parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts) or "(no log output)"

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        pid = self.pid
        if pid is not None:
            log.debug("sending %s to Kafka broker pid %d", sig.name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if not self._wait_exit(pid, timeout) and sig != signal.SIGKILL:
                log.warning("Kafka broker pid %d ignored SIGTERM for %.0f s; killing", pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_exit(pid, 10.0)
        self._process = None
        state = read_broker_state(self.data_dir)
        if state is not None and state.pid is not None:
            _write_broker_state(self.data_dir, _replace_pid(state, None))

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._process is not None and self._process.pid == pid:
            try:
                self._process.wait(timeout)  # Reaps our own child, so no zombie remains.
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self._owns(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True


def _replace_pid(state: BrokerState, pid: int | None) -> BrokerState:
    return BrokerState(
        pid=pid,
        port=state.port,
        controller_port=state.controller_port,
        cluster_id=state.cluster_id,
        kafka_version=state.kafka_version,
        started_at=state.started_at,
    )


def _read_cluster_id(storage_dir: Path) -> str | None:
    try:
        text = (storage_dir / "meta.properties").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id" and value.strip():
            return value.strip()
    return None


_HEAP_RE = re.compile(r"^(\d+)([kKmMgG]?)$")
_HEAP_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _validate_heap(heap: str) -> str:
    if _HEAP_RE.match(heap) is None:
        raise ValueError(f"heap must look like 512m or 1g, got {heap!r}")
    return heap


def _heap_bytes(heap: str) -> int:
    match = _HEAP_RE.match(heap)
    assert match is not None
    return int(match.group(1)) * _HEAP_UNITS[match.group(2).lower()]


def _min_heap(heap: str, floor: str) -> str:
    return heap if _heap_bytes(heap) < _heap_bytes(floor) else floor


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
