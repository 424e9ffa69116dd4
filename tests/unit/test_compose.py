"""deploy/compose.yaml runs the tested configuration: its mounts exist, its ports and targets agree.

Docker is not needed: the compose file and the YAML files it mounts are read with a reader for
the plain block style they are written in (the project has no YAML library); a construct outside
that style fails the reader, so the files stay readable here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from txguard.observability.exporter import DEFAULT_METRICS_PORTS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_COMPOSE = DEPLOY / "prometheus" / "prometheus-compose.yml"
TXGUARD_SERVICES = ("transactions", "detector", "applier", "terminal-risk")
_KEY = re.compile(r"[A-Za-z_][\w.-]*:(?: |$)")

Line = tuple[int, str, int]  # indentation, text, line number


# -- a reader for block-style YAML ----------------------------------------------------------------


def read_yaml(path: Path) -> Any:
    """Block mappings and sequences, JSON-style flow sequences and quoted strings, plain scalars
    (kept as strings), whole-line comments; anything else raises ValueError."""
    lines: list[Line] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if "\t" in raw:
            raise ValueError(f"{path.name}:{number}: tab in indentation")
        lines.append((len(raw) - len(raw.lstrip(" ")), text, number))
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0][0], path.name)
    if end != len(lines):
        raise ValueError(f"{path.name}:{lines[end][2]}: unexpected indentation")
    return value


def _block(lines: list[Line], start: int, indent: int, name: str) -> tuple[Any, int]:
    if lines[start][1].startswith("- "):
        return _sequence(lines, start, indent, name)
    return _mapping(lines, start, indent, name)


def _sequence(lines: list[Line], index: int, indent: int, name: str) -> tuple[list[Any], int]:
    items: list[Any] = []
    while index < len(lines) and lines[index][0] == indent and lines[index][1].startswith("- "):
        _, text, number = lines[index]
        item = text[2:].strip()
        if _KEY.match(item):
            # `- key: value` opens a mapping whose further keys line up with `key`.
            lines[index] = (indent + 2, item, number)
            mapping, index = _mapping(lines, index, indent + 2, name)
            items.append(mapping)
        else:
            items.append(_scalar(item, f"{name}:{number}"))
            index += 1
    return items, index


def _mapping(lines: list[Line], index: int, indent: int, name: str) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    while index < len(lines) and lines[index][0] == indent:
        _, text, number = lines[index]
        where = f"{name}:{number}"
        if not _KEY.match(text):
            raise ValueError(f"{where}: expected `key: value`, got {text!r}")
        key, _, rest = text.partition(":")
        if key in mapping:
            raise ValueError(f"{where}: duplicate key {key}")
        index += 1
        if rest.strip():
            mapping[key] = _scalar(rest.strip(), where)
        elif index < len(lines) and lines[index][0] > indent:
            mapping[key], index = _block(lines, index, lines[index][0], name)
        else:
            mapping[key] = None
    if index < len(lines) and lines[index][0] > indent:
        raise ValueError(f"{name}:{lines[index][2]}: unexpected indentation")
    return mapping, index


def _scalar(text: str, where: str) -> Any:
    if text.startswith(("[", '"')):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON-style: {text!r}") from exc
    if text[0] in "'{&*!|>%@`" or " #" in text or ": " in text or text.endswith(":"):
        raise ValueError(f"{where}: outside the supported style: {text!r}")
    return text


def test_the_reader_refuses_what_it_does_not_understand(tmp_path: Path) -> None:
    for text in (
        "a: &anchor 1\n",
        "a: b # inline comment\n",
        "a: |\n  block\n",
        "a:\n  b: 1\n    c: 2\n",
        "a: 1\na: 2\n",
        "a: {b: 1}\n",
    ):
        path = tmp_path / "bad.yml"
        path.write_text(text)
        with pytest.raises(ValueError):
            read_yaml(path)
    path = tmp_path / "good.yml"
    path.write_text('a:\n  - x\n  - k: "v"\n    n: ["p", "q"]\nb:\nc: plain:colon\n')
    assert read_yaml(path) == {
        "a": ["x", {"k": "v", "n": ["p", "q"]}],
        "b": None,
        "c": "plain:colon",
    }


# -- the compose file ------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document = read_yaml(COMPOSE)
    assert isinstance(document, dict)
    return document


def service(name: str) -> dict[str, Any]:
    definition = compose()["services"][name]
    assert isinstance(definition, dict)
    return definition


def mounts(definition: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume entry."""
    pairs = []
    for entry in definition.get("volumes", []):
        source, target = entry.split(":")[:2]
        pairs.append((source, target))
    return pairs


def published(definition: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port, each published on 127.0.0.1 only."""
    ports = {}
    for entry in definition.get("ports", []):
        host, host_port, container_port = entry.split(":")
        assert host == "127.0.0.1", f"{entry}: publish on 127.0.0.1 only"
        ports[int(container_port)] = int(host_port)
    return ports


def dockerfile_env(name: str) -> str:
    found = re.search(rf"^ENV {name}=(\S+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert found, f"deploy/Dockerfile sets no {name}"
    return found.group(1)


def test_every_bind_mount_and_build_file_exists() -> None:
    for name, definition in compose()["services"].items():
        for source, _target in mounts(definition):
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
        if "build" in definition:
            context = DEPLOY / definition["build"]["context"]
            assert (context / definition["build"]["dockerfile"]).is_file(), name
            assert (context / "pyproject.toml").is_file(), f"{name}: context is not the repo root"
    named = set(compose()["volumes"])
    used = {
        source
        for definition in compose()["services"].values()
        for source, _ in mounts(definition)
        if not source.startswith(".")
    }
    assert used == named, "every named volume is declared and used"


def test_each_txguard_service_runs_itself_against_the_compose_kafka() -> None:
    kafka = service("kafka")["environment"]
    internal = next(
        listener.split("://")[1]
        for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
        if listener.startswith(f"{kafka['KAFKA_INTER_BROKER_LISTENER_NAME']}://")
    )
    assert internal == "kafka:9092"
    for name in TXGUARD_SERVICES:
        definition = service(name)
        assert definition["command"] == ["serve", name]
        assert definition["image"] == "txguard:local"
        assert definition["environment"]["TXGUARD_KAFKA_BOOTSTRAP"] == internal
        assert definition["depends_on"]["kafka"]["condition"] == "service_healthy"
        # Default metrics ports: Prometheus' compose targets and `txguard status` rely on them.
        assert "TXGUARD_METRICS_PORT" not in definition["environment"]
        port = DEFAULT_METRICS_PORTS[name]
        assert published(definition).get(port) == port, f"{name} publishes /metrics on {port}"


def test_the_api_and_the_applier_share_one_store() -> None:
    home = dockerfile_env("TXGUARD_HOME")
    stores = {
        name: dict((t, s) for s, t in mounts(service(name)))
        for name in ("transactions", "applier", "card-key")
    }
    volumes = {name: by_target.get(home) for name, by_target in stores.items()}
    assert volumes["transactions"] is not None
    assert set(volumes.values()) == {volumes["transactions"]}, volumes
    for name in ("transactions", "applier"):
        assert "TXGUARD_STORE_PATH" not in service(name)["environment"], "store under TXGUARD_HOME"
    # The key file is made before the API needs it.
    transactions = service("transactions")
    assert transactions["depends_on"]["card-key"]["condition"] == "service_completed_successfully"
    grpc = transactions["environment"]["TXGUARD_GRPC_ADDR"]
    assert grpc.startswith("0.0.0.0:")
    grpc_port = int(grpc.rsplit(":", 1)[1])
    assert published(transactions).get(grpc_port) == grpc_port


def test_prometheus_runs_the_compose_config_and_the_tested_rules() -> None:
    prometheus = service("prometheus")
    config_dir = dict((t, s) for s, t in mounts(prometheus))["/etc/prometheus"]
    assert (DEPLOY / config_dir).resolve() == PROMETHEUS.parent
    flags = dict(flag.split("=", 1) for flag in prometheus["command"])
    assert flags["--config.file"] == f"/etc/prometheus/{PROMETHEUS_COMPOSE.name}"
    config = read_yaml(PROMETHEUS_COMPOSE)
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).is_file(), rule_file
    # Each job scrapes its compose service on the service's default metrics port.
    services = compose()["services"]
    for job in config["scrape_configs"]:
        name = job["job_name"].removeprefix("txguard-")
        assert name in services, f"{job['job_name']} scrapes no compose service"
        targets = [target for group in job["static_configs"] for target in group["targets"]]
        assert targets == [f"{name}:{DEFAULT_METRICS_PORTS[name]}"]


def test_the_compose_prometheus_config_differs_from_the_tested_one_only_in_targets() -> None:
    def without_targets(path: Path) -> Any:
        config = read_yaml(path)
        for job in config["scrape_configs"]:
            for group in job["static_configs"]:
                group["targets"] = len(group["targets"])
        return config

    assert without_targets(PROMETHEUS_COMPOSE) == without_targets(PROMETHEUS)

    # Line by line too: the commented-out jobs stay in step, only header comments may differ.
    def body(path: Path) -> list[str]:
        lines = path.read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        return [re.sub(r"targets: \[.*\]", "targets: [...]", line) for line in lines[start:]]

    assert body(PROMETHEUS_COMPOSE) == body(PROMETHEUS)


def test_the_compose_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make prometheus-tools)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_gets_the_provisioning_and_reaches_prometheus_as_localhost() -> None:
    grafana = service("grafana")
    by_target = dict((t, s) for s, t in mounts(grafana))
    provisioning = DEPLOY / by_target["/etc/grafana/provisioning"]
    assert provisioning.resolve() == (DEPLOY / "grafana" / "provisioning").resolve()
    providers = read_yaml(provisioning / "dashboards" / "txguard.yml")["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert (DEPLOY / by_target[dashboards_path]).resolve() == (DEPLOY / "grafana" / "dashboards")
    assert list((DEPLOY / by_target[dashboards_path]).glob("*.json"))
    # The data source says localhost:9090: Grafana shares Prometheus' network namespace.
    source = read_yaml(provisioning / "datasources" / "txguard.yml")["datasources"][0]
    url = urlsplit(source["url"])
    assert (url.hostname, url.port) == ("localhost", 9090)
    assert grafana["network_mode"] == "service:prometheus"
    assert published(service("prometheus")) == {9090: 9090, 3000: 3000}
