"""The metric catalogue, the files that query it (alerts, dashboard) and the statistics parser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from tests.conftest import free_tcp_port
from txguard.observability import exporter, metrics
from txguard.observability.exporter import (
    DEFAULT_METRICS_PORTS,
    KafkaStatistics,
    MetricsEndpointError,
    start_metrics_endpoint,
    stop_metrics_endpoint,
)
from txguard.observability.metrics import ConsumerLagTracker, ConsumerMetrics, PartitionSpan

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "txguard.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "txguard.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
STATISTICS_SAMPLE = Path(__file__).parent / "data" / "librdkafka_statistics.json"

METRIC_NAME = re.compile(r"txguard_[a-z0-9_]*[a-z0-9]")
RECORDING_RULE_NAME = re.compile(r"txguard:[a-z0-9_:]+")
# Label names that could carry a customer's or a card's data; none may exist.
FORBIDDEN_LABELS = {"account", "account_id", "card", "card_number", "pan", "token", "client_id"}


def family(metric: MetricWrapperBase) -> Metric:
    return next(iter(metric.describe()))


def catalogue_series_names() -> dict[str, MetricWrapperBase]:
    """Every series name the catalogue can expose, with the metric that exposes it."""
    names: dict[str, MetricWrapperBase] = {}
    for metric in metrics.CATALOGUE:
        for family in metric.describe():
            if isinstance(metric, Counter):
                suffixes = ["_total"]
            elif isinstance(metric, Histogram):
                suffixes = ["_bucket", "_sum", "_count"]
            elif isinstance(metric, Info):
                suffixes = ["_info"]
            else:
                suffixes = [""]
            for suffix in suffixes:
                names[family.name + suffix] = metric
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_blocks() -> dict[str, str]:
    """Each alert rule's text, by alert name (the rule files' own layout: `- alert: NAME`)."""
    text = ALERTS.read_text()
    parts = re.split(r"^\s*- (?=alert: |record: )", text, flags=re.MULTILINE)
    blocks = {}
    for part in parts:
        match = re.match(r"alert: (\w+)", part)
        if match:
            blocks[match.group(1)] = part
    return blocks


# -- the catalogue itself -----------------------------------------------------------------------


def test_every_module_level_metric_is_in_the_catalogue_once() -> None:
    declared = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    assert {id(m) for m in declared} == {id(m) for m in metrics.CATALOGUE}
    names = [family.name for m in metrics.CATALOGUE for family in m.describe()]
    assert len(names) == len(set(names)), "a metric name is declared twice"


@pytest.mark.parametrize("metric", metrics.CATALOGUE, ids=lambda m: family(m).name)
def test_metric_names_follow_the_conventions(metric: MetricWrapperBase) -> None:
    name, help_text = family(metric).name, family(metric).documentation
    assert re.fullmatch(r"txguard_[a-z][a-z0-9_]*[a-z0-9]", name), name
    assert "__" not in name
    # A counter's exposed name ends in _total (prometheus_client strips it from the family).
    assert not name.endswith("_total")
    assert isinstance(metric, Counter | Gauge | Histogram | Info)
    # Base units only: seconds, not milliseconds or minutes; no unit spelled twice.
    for unit in ("_ms", "_millis", "_milliseconds", "_us", "_micros", "_minutes", "_hours"):
        assert unit not in name, f"{name}: use base units (seconds)"
    if isinstance(metric, Histogram) and any(
        word in name for word in ("duration", "latency", "rtt", "lag")
    ):
        assert name.endswith("_seconds"), f"{name}: a duration histogram is in seconds"
    if "_seconds" in name:
        assert name.endswith(("_seconds", "_timestamp_seconds")), name
    # One line, said once: the HELP text is the catalogue's description.
    assert help_text and "\n" not in help_text and len(help_text) <= 120, name
    assert not help_text.endswith("."), f"{name}: HELP is a phrase, without a final period"


@pytest.mark.parametrize("metric", metrics.CATALOGUE, ids=lambda m: family(m).name)
def test_label_names_are_explicit_and_carry_no_customer_data(metric: MetricWrapperBase) -> None:
    name = family(metric).name
    labels = set(metric._labelnames)
    assert not labels & FORBIDDEN_LABELS, f"{name} has a label that could hold customer data"
    if name.startswith(("txguard_consumer_", "txguard_dead_letter_", "txguard_duplicates_")):
        assert "service" in labels, f"{name}: every consumer metric is labelled by service"


def test_the_exposition_passes_promtool_lint() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make prometheus-tools)")
    exposition = generate_latest(REGISTRY)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_the_operations_guide_lists_every_metric_with_its_type_and_labels() -> None:
    guide = OPERATIONS.read_text()
    for metric in metrics.CATALOGUE:
        suffix = {Counter: "_total", Info: "_info"}.get(type(metric), "")
        name = family(metric).name + suffix
        kind = type(metric).__name__.lower()
        row = re.search(rf"^\| `{name}` \| {kind} \| ([^|]*) \|", guide, flags=re.MULTILINE)
        assert row, f"docs/operations.md has no catalogue row for {name} ({kind})"
        for label in metric._labelnames:
            assert f"`{label}`" in row.group(1), f"{name}: label {label} not documented"


def test_histogram_buckets_cover_their_ranges() -> None:
    assert metrics.API_LATENCY_BUCKETS[0] <= 0.0005 and metrics.API_LATENCY_BUCKETS[-1] >= 1.0
    assert metrics.END_TO_END_BUCKETS[0] <= 0.005 and metrics.END_TO_END_BUCKETS[-1] >= 30.0
    # The p99 > 200 ms alert is exact only if 0.2 is a bucket boundary.
    assert 0.2 in metrics.END_TO_END_BUCKETS
    assert metrics.SCORE_BUCKETS[-1] == 1.0 and 0.5 in metrics.SCORE_BUCKETS
    assert 0.8 in metrics.SCORE_BUCKETS
    for buckets in (metrics.API_LATENCY_BUCKETS, metrics.END_TO_END_BUCKETS, metrics.SCORE_BUCKETS):
        assert list(buckets) == sorted(set(buckets))


# -- files that query the catalogue ----------------------------------------------------------------


def test_alert_rules_and_alert_tests_use_only_catalogue_metrics() -> None:
    known = catalogue_series_names()
    for path in (ALERTS, ALERT_TESTS):
        used = set(METRIC_NAME.findall(path.read_text()))
        assert used, f"{path.name} names no txguard metric"
        unknown = sorted(used - set(known))
        assert not unknown, f"{path.name} uses metrics missing from the catalogue: {unknown}"


def test_dashboard_queries_use_only_catalogue_metrics_and_defined_recording_rules() -> None:
    known = catalogue_series_names()
    recorded = set(re.findall(r"^\s*- record: (\S+)", ALERTS.read_text(), flags=re.MULTILINE))
    queries = dashboard_queries()
    assert len(queries) >= 20
    for query in queries:
        unknown = set(METRIC_NAME.findall(query)) - set(known)
        assert not unknown, f"dashboard query uses unknown metrics {unknown}: {query}"
        undefined = set(RECORDING_RULE_NAME.findall(query)) - recorded
        assert not undefined, f"dashboard query uses undefined recording rules: {query}"
        assert METRIC_NAME.search(query) or RECORDING_RULE_NAME.search(query), query


def test_dashboard_covers_what_operators_look_at() -> None:
    used = {name for query in dashboard_queries() for name in METRIC_NAME.findall(query)}
    for needed in (
        "txguard_transactions_accepted_total",
        "txguard_api_request_duration_seconds_bucket",
        "txguard_end_to_end_latency_seconds_bucket",
        "txguard_consumer_lag_records",
        "txguard_consumer_lag_seconds",
        "txguard_retries_total",
        "txguard_dead_letter_records_total",
        "txguard_decisions_total",
        "txguard_fraud_score_bucket",
        "txguard_model_info",
        "txguard_outbox_backlog_events",
        "txguard_outbox_oldest_unpublished_age_seconds",
    ):
        assert needed in used, f"no dashboard panel shows {needed}"


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    uid = re.search(r"^\s*uid: (\S+)", DATASOURCES.read_text(), flags=re.MULTILINE)
    assert uid is not None
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid.group(1), panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel.get("description"), f"panel {panel['title']!r} has no description"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid.group(1)


def test_dashboard_queries_are_valid_promql() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make prometheus-tools)")
    # promtool parses every expression of a rule file: one recording rule per panel query.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for index, query in enumerate(dashboard_queries()):
        expr = query.replace("$__rate_interval", "1m")
        lines += [f"      - record: dashboard:query{index}", f"        expr: {json.dumps(expr)}"]
    rules = Path(__file__).parent / f".dashboard-queries-{uuid.uuid4().hex}.yml"
    try:
        rules.write_text("\n".join(lines) + "\n")
        result = subprocess.run(
            [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
        )
    finally:
        rules.unlink()
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_documented_labelled_and_tested_both_ways() -> None:
    blocks = alert_blocks()
    assert set(blocks) >= {
        "TxguardConsumerLagHigh",
        "TxguardConsumerLagNotDecreasing",
        "TxguardKafkaBrokerDown",
        "TxguardDeadLetterRecords",
        "TxguardEndToEndLatencyHigh",
        "TxguardOutboxBacklogStale",
        "TxguardTargetDown",
        "TxguardDeclineRateSpike",
    }
    runbook = OPERATIONS.read_text()
    tests = ALERT_TESTS.read_text()
    for name, block in blocks.items():
        for field in ("severity:", "summary:", "description:", "runbook_url:"):
            assert field in block, f"{name} lacks {field}"
        anchor = name.lower()
        assert f"runbook_url: docs/operations.md#{anchor}" in block
        assert re.search(rf"^#+ {name}\s*$", runbook, flags=re.MULTILINE), (
            f"docs/operations.md has no runbook section for {name}"
        )
        fires = re.search(rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:", tests)
        silent = re.search(rf"alertname: {name}\n\s+exp_alerts: \[\]", tests)
        assert fires, f"no promtool test where {name} fires"
        assert silent, f"no promtool test where {name} stays silent"


def test_prometheus_scrapes_every_service_on_its_default_port() -> None:
    config = PROMETHEUS_CONFIG.read_text()
    active = "\n".join(line for line in config.splitlines() if not line.lstrip().startswith("#"))
    for service in ("transactions", "detector", "applier", "terminal-risk"):
        port = DEFAULT_METRICS_PORTS[service]
        assert f"job_name: txguard-{service}" in active
        assert f":{port}" in active


# -- librdkafka statistics -------------------------------------------------------------------------


def sample(name: str) -> Any:
    return json.loads(STATISTICS_SAMPLE.read_text())[name]


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_statistics_of_a_connected_consumer() -> None:
    stats = sample("consumer")
    client = f"consumer-{uuid.uuid4().hex[:8]}"
    stats["client_id"] = client
    broker_name, broker = next(
        (name, b) for name, b in stats["brokers"].items() if b["source"] == "learned"
    )
    KafkaStatistics()(json.dumps(stats))

    labels = {"client": client, "client_type": "consumer", "broker": broker_name}
    assert value("txguard_kafka_broker_connected", **labels) == 1.0
    assert value("txguard_kafka_broker_rtt_avg_seconds", **labels) == pytest.approx(
        broker["rtt"]["avg"] / 1e6
    )
    assert value("txguard_kafka_broker_rtt_p99_seconds", **labels) == pytest.approx(
        broker["rtt"]["p99"] / 1e6
    )
    # GroupCoordinator is an alias of a learned broker, not a broker of its own.
    assert "GroupCoordinator" in stats["brokers"]
    coordinator = dict(labels, broker="GroupCoordinator")
    assert value("txguard_kafka_broker_connected", **coordinator) is None


def test_statistics_of_a_producer_report_its_queue() -> None:
    stats = sample("producer")
    client = f"producer-{uuid.uuid4().hex[:8]}"
    stats["client_id"] = client
    KafkaStatistics().update(stats)
    assert value("txguard_kafka_producer_queue_messages", client=client) == stats["msg_cnt"]
    broker_name = next(iter(stats["brokers"]))
    labels = {"client": client, "client_type": "producer", "broker": broker_name}
    assert value("txguard_kafka_broker_connected", **labels) == 1.0


def test_an_unreachable_broker_is_reported_down_and_then_up_again() -> None:
    first, second = sample("unreachable")
    client = f"producer-{uuid.uuid4().hex[:8]}"
    parser = KafkaStatistics()
    broker_name = next(iter(first["brokers"]))
    labels = {"client": client, "client_type": "producer", "broker": broker_name}
    for stats in (first, second):
        stats["client_id"] = client
    # First report: INIT with nothing to compare yet is indistinguishable from idle.
    parser.update(first)
    assert value("txguard_kafka_broker_connected", **labels) is None
    # Second: still not connected, and librdkafka tried again: down.
    assert second["brokers"][broker_name]["connects"] > first["brokers"][broker_name]["connects"]
    parser.update(second)
    assert value("txguard_kafka_broker_connected", **labels) == 0.0
    recovered = json.loads(json.dumps(second))
    recovered["brokers"][broker_name]["state"] = "UP"
    parser.update(recovered)
    assert value("txguard_kafka_broker_connected", **labels) == 1.0


def test_an_idle_broker_is_not_reported_as_down() -> None:
    stats = sample("consumer")
    client = f"consumer-{uuid.uuid4().hex[:8]}"
    stats["client_id"] = client
    broker_name = next(n for n, b in stats["brokers"].items() if b["source"] == "learned")
    labels = {"client": client, "client_type": "consumer", "broker": broker_name}
    parser = KafkaStatistics()
    parser.update(stats)
    assert value("txguard_kafka_broker_connected", **labels) == 1.0
    # librdkafka left the connection (not needed) and does not try to reconnect.
    stats["brokers"][broker_name]["state"] = "INIT"
    parser.update(stats)
    assert value("txguard_kafka_broker_connected", **labels) is None
    assert value("txguard_kafka_broker_rtt_p99_seconds", **labels) is None


def test_malformed_statistics_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    KafkaStatistics()("{not json")
    assert "malformed librdkafka statistics" in caplog.text


# -- lag tracking ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def span(partition: int, first: int, last: int, first_ts: float, last_ts: float) -> PartitionSpan:
    return PartitionSpan("t", partition, first, first_ts, last, last_ts, last - first + 1)


def lag(service: str, partition: int) -> tuple[float | None, float | None]:
    labels = {"service": service, "topic": "t", "partition": str(partition)}
    return value("txguard_consumer_lag_records", **labels), value(
        "txguard_consumer_lag_seconds", **labels
    )


def test_lag_seconds_is_the_age_of_the_oldest_unprocessed_record() -> None:
    service = f"lag-{uuid.uuid4().hex[:8]}"
    clock = FakeClock(1_000.0)
    tracker = ConsumerLagTracker(service, clock=clock)
    tracker.positions({("t", 0): (100, 150)})
    # 50 records behind, none seen yet: their age counts from now.
    assert lag(service, 0) == (50.0, 0.0)
    clock.now = 1_003.0
    assert lag(service, 0) == (50.0, 3.0)

    # A batch of offsets 100..119 arrives; its first record was produced at 990.
    tracker.received([span(0, 100, 119, 990.0, 995.0)])
    assert lag(service, 0) == (50.0, 13.0)
    # While it is processed (scrape time), the age keeps growing.
    clock.now = 1_004.0
    assert lag(service, 0) == (50.0, 14.0)

    # Done: 30 left; the next record is at least as young as the last processed one (995).
    tracker.processed([span(0, 100, 119, 990.0, 995.0)])
    assert lag(service, 0) == (30.0, 9.0)

    # The rest arrives and is processed: caught up, lag 0 in both.
    tracker.received([span(0, 120, 149, 996.0, 1_001.0)])
    tracker.processed([span(0, 120, 149, 996.0, 1_001.0)])
    assert lag(service, 0) == (0.0, 0.0)


def test_a_position_past_transaction_markers_counts_as_caught_up() -> None:
    service = f"lag-{uuid.uuid4().hex[:8]}"
    clock = FakeClock(2_000.0)
    tracker = ConsumerLagTracker(service, clock=clock)
    tracker.positions({("t", 1): (0, 4)})
    tracker.received([span(1, 0, 2, 1_990.0, 1_991.0)])
    tracker.processed([span(1, 0, 2, 1_990.0, 1_991.0)])
    # Offset 3 is a commit marker: no batch will ever show it.
    assert lag(service, 1) == (1.0, 9.0)
    tracker.positions({("t", 1): (4, 4)})
    assert lag(service, 1) == (0.0, 0.0)


def test_revoked_partitions_stop_reporting_lag() -> None:
    service = f"lag-{uuid.uuid4().hex[:8]}"
    tracker = ConsumerLagTracker(service, clock=FakeClock(0.0))
    tracker.positions({("t", 0): (5, 10), ("t", 1): (5, 10)})
    assert lag(service, 1) == (5.0, 0.0)
    tracker.positions({("t", 0): (5, 10)})  # partition 1 left the assignment
    assert lag(service, 1) == (None, None)
    tracker.forget("t", 0)
    assert lag(service, 0) == (None, None)


def test_consumer_metrics_count_batches_per_topic() -> None:
    consumer = ConsumerMetrics("detector", clock=FakeClock(50.0))
    labels = {"service": "detector", "topic": "t"}
    before_consumed = value("txguard_consumer_records_consumed_total", **labels) or 0.0
    before_processed = value("txguard_consumer_records_processed_total", **labels) or 0.0
    consumer.polled()
    consumer.batch_received([span(0, 0, 9, 40.0, 41.0), span(1, 5, 6, 42.0, 43.0)])
    assert value("txguard_consumer_records_consumed_total", **labels) == before_consumed + 12
    assert (value("txguard_consumer_records_processed_total", **labels) or 0.0) == before_processed
    consumer.batch_processed()
    assert value("txguard_consumer_records_processed_total", **labels) == before_processed + 12
    assert value("txguard_consumer_last_poll_timestamp_seconds", service="detector") == 50.0
    # Dead-letter reasons exist from the start (at 0), so `increase()` sees the first one.
    for reason in metrics.INVALID_RECORD_KINDS:
        assert (
            value("txguard_dead_letter_records_total", service="detector", reason=reason)
            is not None
        )


# -- the endpoint ---------------------------------------------------------------------------------


def test_the_endpoint_serves_the_catalogue_and_refuses_a_taken_port() -> None:
    port = free_tcp_port()
    assert start_metrics_endpoint("applier", port, host="127.0.0.1") == port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
        assert 'txguard_service_info{service="applier"' in body
        assert "# HELP txguard_consumer_lag_seconds" in body
        with pytest.raises(MetricsEndpointError, match="TXGUARD_METRICS_PORT"):
            start_metrics_endpoint("applier", port, host="127.0.0.1")
    finally:
        stop_metrics_endpoint(port)


def test_port_zero_disables_the_endpoint_and_each_service_has_its_own_default() -> None:
    assert start_metrics_endpoint("detector", 0) is None
    assert len(set(DEFAULT_METRICS_PORTS.values())) == len(DEFAULT_METRICS_PORTS)
    assert set(DEFAULT_METRICS_PORTS) == set(metrics.SERVICES)
    assert exporter.default_metrics_port("transactions") == 9464
    with pytest.raises(ValueError, match="no default metrics port"):
        exporter.default_metrics_port("nope")
