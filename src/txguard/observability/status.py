"""`txguard status`: the dashboard's numbers in a terminal, read from each service's /metrics.

For someone without Grafana: per service, up or down, throughput, latency percentiles, lag,
retries, dead letters and the outbox, refreshed live. Each refresh scrapes every target (all at
once, short timeout) and compares with the previous scrape of the same target:

- a rate is the increase of a counter divided by the time between the two scrapes (a counter
  that went down was reset by a restart and counts from zero, as in Prometheus' `rate()`);
- a percentile comes from the increase of each histogram bucket, interpolated linearly within
  the bucket it falls in, as Prometheus' `histogram_quantile()` does.

So every rate and percentile covers the last refresh interval, not the life of the process;
gauges (lag, backlog) and totals are shown as scraped.

`render(snapshot)` turns one snapshot into the screen and does nothing else; `run_status()` is
the loop around it.
"""

from __future__ import annotations

import math
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeAlias
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from txguard.observability.exporter import DEFAULT_METRICS_PORTS

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_INTERVAL_SECONDS: Final = 2.0
# A scrape slower than this counts as down: a healthy endpoint answers in milliseconds.
SCRAPE_TIMEOUT_SECONDS: Final = 1.0
CONSUMERS: Final = ("detector", "applier", "terminal-risk")
OUTCOMES: Final = ("approve", "review", "decline")
# A terminal-table lag beyond this is measured from no watermark at all, not a real delay.
TABLE_LAG_UNKNOWN_SECONDS: Final = 365 * 24 * 3600.0
# Where the screen wraps the per-partition lag list.
SCREEN_WIDTH: Final = 100

Labels: TypeAlias = tuple[tuple[str, str], ...]
SampleKey: TypeAlias = tuple[str, Labels]


# -- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusTarget:
    """One service's metrics endpoint: `service` says how to read it, `url` where."""

    service: str
    url: str

    @property
    def address(self) -> str:
        return urlsplit(self.url).netloc or self.url


def default_targets() -> list[StatusTarget]:
    """Every service on this host, on its default metrics port."""
    return [_target(service, DEFAULT_HOST, port) for service, port in DEFAULT_METRICS_PORTS.items()]


def status_targets(overrides: Sequence[StatusTarget] = ()) -> list[StatusTarget]:
    """The default targets, where each service named in `overrides` is replaced by the targets
    given for it (one to move a service, several to watch several instances)."""
    given: dict[str, list[StatusTarget]] = defaultdict(list)
    for target in overrides:
        given[target.service].append(target)
    targets: list[StatusTarget] = []
    for default in default_targets():
        targets.extend(given.get(default.service, [default]))
    return targets


def parse_target(text: str) -> StatusTarget:
    """`SERVICE=HOST:PORT` (also `SERVICE=:PORT`, `SERVICE=HOST`, `SERVICE=[IPv6]:PORT`).

    Raises ValueError with a message for the command line when `text` is not one.
    """
    service, separator, address = (part.strip() for part in text.partition("="))
    example = "e.g. --target detector=127.0.0.1:9466"
    if not separator or not service or not address:
        raise ValueError(f"--target expects SERVICE=HOST:PORT ({example}), not {text!r}")
    if service not in DEFAULT_METRICS_PORTS:
        raise ValueError(
            f"unknown service {service!r} in --target {text!r}: "
            f"expected one of {', '.join(DEFAULT_METRICS_PORTS)}"
        )
    host, port_text = _split_address(address)
    if not host:
        host = DEFAULT_HOST
    if port_text is None:
        port_text = str(DEFAULT_METRICS_PORTS[service])
    if any(char.isspace() or char in "/@?#" for char in host):
        raise ValueError(f"--target {text!r}: {host!r} is not a host name or address ({example})")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--target {text!r}: the port must be a number from 1 to 65535")
    return _target(service, host, int(port_text))


def _split_address(address: str) -> tuple[str, str | None]:
    if address.startswith("["):
        host, _, rest = address.partition("]")
        return host + "]", rest.removeprefix(":") if rest else None
    if address.isdigit():
        return "", address
    host, separator, port = address.rpartition(":")
    return (host, port) if separator else (address, None)


def _target(service: str, host: str, port: int) -> StatusTarget:
    return StatusTarget(service, f"http://{host}:{port}/metrics")


# -- scrapes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One scrape of one target: every sample by name and labels, or why there is none."""

    target: StatusTarget
    taken_at: float  # time.monotonic() when the answer arrived
    samples: Mapping[SampleKey, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def up(self) -> bool:
        return self.error is None

    def series(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """The samples of `name` whose labels include `labels`."""
        wanted = labels.items()
        return [
            (dict(sample_labels), value)
            for (sample_name, sample_labels), value in self.samples.items()
            if sample_name == name and wanted <= dict(sample_labels).items()
        ]

    def total(self, name: str, **labels: str) -> float | None:
        """Sum of the matching samples; None when there is none."""
        found = self.series(name, **labels)
        return sum(value for _, value in found) if found else None


def parse_exposition(text: str) -> dict[SampleKey, float]:
    """Prometheus' text format to {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_target(target: StatusTarget, timeout: float = SCRAPE_TIMEOUT_SECONDS) -> Scrape:
    try:
        # The URL is always http://HOST:PORT/metrics, built by parse_target or default_targets.
        with urllib.request.urlopen(target.url, timeout=timeout) as reply:  # noqa: S310
            body = reply.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return Scrape(target, time.monotonic(), error=f"HTTP {exc.code} from {target.url}")
    except urllib.error.URLError as exc:
        return Scrape(target, time.monotonic(), error=_unreachable(exc.reason, timeout))
    except OSError as exc:
        return Scrape(target, time.monotonic(), error=_unreachable(exc, timeout))
    taken_at = time.monotonic()
    try:
        samples = parse_exposition(body)
    except Exception as exc:
        # Whatever answers there, it is not a metrics endpoint.
        return Scrape(target, taken_at, error=f"not a Prometheus endpoint ({exc})")
    return Scrape(target, taken_at, samples)


def _unreachable(reason: object, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


# -- numbers over one refresh interval ---------------------------------------------------------


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile()` on cumulative (upper bound, count) buckets.

    None without observations. Within the bucket holding the rank, the value is interpolated
    linearly from the bucket's lower bound (0 for the first bucket); a rank in the +Inf bucket
    gives the highest finite bound.
    """
    ordered = sorted(buckets)
    if len(ordered) < 2 or ordered[-1][0] != math.inf or ordered[-1][1] <= 0:
        return None
    counts: list[float] = []
    for _, count in ordered:
        # Cumulative counts never decrease; deltas of two racing scrapes can, by a little.
        counts.append(max(count, counts[-1]) if counts else count)
    rank = q * counts[-1]
    lower_bound, lower_count = 0.0, 0.0
    for (upper_bound, _), count in zip(ordered, counts, strict=True):
        if count >= rank:
            if upper_bound == math.inf:
                return ordered[-2][0]
            if upper_bound <= 0 or count == lower_count:
                return upper_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = upper_bound, count
    return ordered[-2][0]


@dataclass(frozen=True)
class ServiceWindow:
    """One target between its previous scrape and the current one."""

    current: Scrape
    previous: Scrape | None = None

    @property
    def target(self) -> StatusTarget:
        return self.current.target

    @property
    def seconds(self) -> float | None:
        """Time between the two scrapes; None when there is no earlier answer to compare with."""
        if self.previous is None or not self.previous.up or not self.current.up:
            return None
        elapsed = self.current.taken_at - self.previous.taken_at
        return elapsed if elapsed > 0 else None

    def increases(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """Each matching counter series' increase; a series that went down restarted from 0."""
        if self.seconds is None or self.previous is None:
            return []
        increases = []
        for series_labels, value in self.current.series(name, **labels):
            key = (name, tuple(sorted(series_labels.items())))
            # A series missing before was created by its first event: it counts from 0.
            before = self.previous.samples.get(key, 0.0)
            increases.append((series_labels, value - before if value >= before else value))
        return increases

    def rate(self, name: str, **labels: str) -> float | None:
        """Per-second increase of the matching counters together; None without a window.

        No matching series is a rate of 0: labelled counters appear with their first event.
        """
        seconds = self.seconds
        if seconds is None:
            return None
        return sum(increase for _, increase in self.increases(name, **labels)) / seconds

    def rates_by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Per-second increase of the matching counters by the value of `label`."""
        seconds = self.seconds
        if seconds is None:
            return {}
        rates: dict[str, float] = defaultdict(float)
        for series_labels, increase in self.increases(name, **labels):
            rates[series_labels.get(label, "")] += increase / seconds
        return dict(rates)

    def quantiles(
        self, histogram: str, qs: Sequence[float], **labels: str
    ) -> tuple[float | None, ...]:
        """Quantiles of what the matching histogram series observed between the two scrapes."""
        by_bound: dict[float, float] = defaultdict(float)
        for series_labels, increase in self.increases(f"{histogram}_bucket", **labels):
            by_bound[float(series_labels["le"])] += increase
        return tuple(histogram_quantile(q, by_bound.items()) for q in qs)


@dataclass(frozen=True)
class StatusSnapshot:
    """What one screen shows: each target's window, and when it was taken (Unix time)."""

    windows: tuple[ServiceWindow, ...]
    taken_at: float


def build_snapshot(
    previous: Sequence[Scrape] | None, current: Sequence[Scrape], taken_at: float
) -> StatusSnapshot:
    """Pairs two rounds of scrapes of the same targets; `previous` None for the first screen."""
    if previous is None:
        return StatusSnapshot(tuple(ServiceWindow(scrape) for scrape in current), taken_at)
    return StatusSnapshot(
        tuple(
            ServiceWindow(now, before if before.target == now.target else None)
            for before, now in zip(previous, current, strict=True)
        ),
        taken_at,
    )


# -- the screen --------------------------------------------------------------------------------

LABEL_WIDTH: Final = 13


def render(snapshot: StatusSnapshot) -> str:
    """The whole screen for one snapshot, ending with a newline."""
    moment = datetime.fromtimestamp(snapshot.taken_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    seconds = [w.seconds for w in snapshot.windows if w.seconds is not None]
    if seconds:
        over = f"rates and percentiles over the last {max(seconds):.1f} s"
    else:
        over = "first scrape: rates and percentiles from the next refresh"
    lines = [f"txguard status  {moment}  ({over})"]
    relay_inside = any(
        w.target.service == "transactions" and _runs_relay(w.current) for w in snapshot.windows
    )
    for window in snapshot.windows:
        lines.append("")
        lines.extend(_block(window, relay_inside=relay_inside))
    return "\n".join(lines) + "\n"


def _block(window: ServiceWindow, *, relay_inside: bool) -> list[str]:
    target, scrape = window.target, window.current
    head = f"{target.service}  {target.address}"
    if not scrape.up:
        if target.service == "relay" and relay_inside:
            return [f"{head}  not running alone: the relay runs inside transactions (see above)"]
        return [f"{head}  DOWN ({scrape.error}); start it: {_start_hint(target.service)}"]
    lines = [head + "  up" + _identity(target, scrape)]
    if target.service == "transactions":
        lines.extend(_transactions_lines(window))
    elif target.service == "relay":
        lines.extend(_relay_lines(window))
    else:
        lines.extend(_consumer_lines(window, target.service))
        if target.service == "detector":
            lines.extend(_detector_lines(window))
        elif target.service == "applier":
            lines.extend(_applier_lines(window))
    return lines


def _identity(target: StatusTarget, scrape: Scrape) -> str:
    info = scrape.series("txguard_service_info")
    if not info:
        return ""
    labels = info[0][0]
    reported = labels.get("service", "")
    text = f"  txguard {labels.get('version', '?')}"
    if reported and reported != target.service:
        text += f"  (this endpoint reports service {reported!r})"
    return text


def _start_hint(service: str) -> str:
    if service == "relay":
        return "txguard serve transactions (runs a relay) or txguard serve relay"
    return f"txguard serve {service}"


def _runs_relay(scrape: Scrape) -> bool:
    # Created when a relay starts in this process, whatever it has published since.
    return bool(scrape.series("txguard_end_to_end_latency_seconds_count", stage="published"))


def _transactions_lines(window: ServiceWindow) -> list[str]:
    scrape = window.current
    accepted = window.rate("txguard_transactions_accepted_total")
    replayed = window.rate("txguard_transactions_replayed_total")
    total = scrape.total("txguard_transactions_accepted_total")
    rejected = window.rates_by("txguard_transactions_rejected_total", "reason")
    p50, p99 = window.quantiles("txguard_api_request_duration_seconds", (0.5, 0.99))
    lines = [
        _row(
            "accepted",
            f"{_rate(accepted)}  (total {_count(total)})   replayed {_rate(replayed)}",
        ),
        _row(
            "rejected",
            _rate(window.rate("txguard_transactions_rejected_total"))
            + _breakdown(rejected, skip_zero=True),
        ),
        _row("API latency", f"p50 {_duration(p50)}   p99 {_duration(p99)}"),
    ]
    if _runs_relay(scrape):
        lines.extend(_outbox_lines(window))
    else:
        lines.append(_row("outbox", "no relay in this process (--no-relay): see the relay block"))
    return lines


def _relay_lines(window: ServiceWindow) -> list[str]:
    lines = _outbox_lines(window)
    retries = window.rate("txguard_retries_total", service="relay")
    failures = window.current.total("txguard_outbox_delivery_failures_total")
    lines.append(
        _row("retries", f"{_rate(retries)}   delivery failures {_count(failures)} in total")
    )
    return lines


def _outbox_lines(window: ServiceWindow) -> list[str]:
    scrape = window.current
    backlog = scrape.total("txguard_outbox_backlog_events")
    oldest = scrape.total("txguard_outbox_oldest_unpublished_age_seconds")
    published = window.rate("txguard_outbox_records_published_total")
    p50, p99 = window.quantiles(
        "txguard_end_to_end_latency_seconds", (0.5, 0.99), stage="published"
    )
    return [
        _row(
            "outbox",
            f"backlog {_count(backlog)} events   oldest {_duration(oldest)}   "
            f"published {_rate(published)}",
        ),
        _row("to Kafka", f"p50 {_duration(p50)}   p99 {_duration(p99)}   (accepted -> published)"),
    ]


def _consumer_lines(window: ServiceWindow, service: str) -> list[str]:
    scrape = window.current
    consumed = window.rate("txguard_consumer_records_consumed_total", service=service)
    if scrape.total("txguard_consumer_records_consumed_total", service=service) is None:
        first = _row("consumed", "- (nothing received yet: waiting for Kafka or partitions)")
    else:
        first = _row("consumed", _rate(consumed))
    lines = [first]
    lines.extend(_lag_lines(scrape, service))
    retries = window.rate("txguard_retries_total", service=service)
    # Counters without a series have not counted anything yet.
    dead = scrape.total("txguard_dead_letter_records_total", service=service) or 0.0
    dead_rate = window.rate("txguard_dead_letter_records_total", service=service)
    skipped = scrape.total("txguard_consumer_records_skipped_total", service=service)
    duplicates = scrape.total("txguard_duplicates_dropped_total", service=service) or 0.0
    parts = [f"retries {_rate(retries)}", f"DLQ {_count(dead)} ({_rate(dead_rate)})"]
    if skipped:
        parts.append(f"skipped {_count(skipped)}")
    parts.append(f"duplicates {_count(duplicates)}")
    lines.append(_row("errors", "   ".join(parts)))
    table_lag = scrape.total("txguard_terminal_table_watermark_lag_seconds", service=service)
    if table_lag is not None:
        if table_lag > TABLE_LAG_UNKNOWN_SECONDS:
            shown = "no table watermark yet"
        else:
            shown = f"{_duration(table_lag)} behind the transactions (event time)"
        lines.append(_row("table lag", shown))
    return lines


def _lag_lines(scrape: Scrape, service: str) -> list[str]:
    records = {
        (labels["topic"], labels["partition"]): value
        for labels, value in scrape.series("txguard_consumer_lag_records", service=service)
    }
    seconds = {
        (labels["topic"], labels["partition"]): value
        for labels, value in scrape.series("txguard_consumer_lag_seconds", service=service)
    }
    partitions = sorted(records.keys() | seconds.keys(), key=lambda tp: (tp[0], _int(tp[1])))
    if not partitions:
        return [_row("lag", "- (no partitions assigned)")]
    lines = [
        _row(
            "lag",
            f"max {_count(max(records.values(), default=0))} records, "
            f"{_duration(max(seconds.values(), default=0.0))}   "
            f"({len(partitions)} partitions, records/age each)",
        )
    ]
    by_topic: dict[str, list[str]] = defaultdict(list)
    for topic, partition in partitions:
        by_topic[topic].append(
            f"p{partition} {_count(records.get((topic, partition)))}/"
            f"{_duration(seconds.get((topic, partition)))}"
        )
    indent = " " * (LABEL_WIDTH + 2)
    for topic, entries in by_topic.items():
        line = f"{indent}{topic}:"
        for entry in entries:
            if len(line) + len(entry) + 2 > SCREEN_WIDTH:
                lines.append(line)
                line = indent + "  "
            line += "  " + entry
        lines.append(line)
    return lines


def _detector_lines(window: ServiceWindow) -> list[str]:
    scrape = window.current
    outcomes = window.rates_by("txguard_decisions_total", "outcome")
    model = scrape.series("txguard_model_info")
    if model:
        labels = model[0][0]
        version = f"{labels.get('version', '?')} ({labels.get('kind', '?')})"
    else:
        version = "-"
    p50, p95, p99 = window.quantiles(
        "txguard_end_to_end_latency_seconds", (0.5, 0.95, 0.99), stage="decided"
    )
    ordered = {name: outcomes.get(name, 0.0) for name in OUTCOMES} if outcomes else {}
    return [
        _row(
            "decisions",
            _rate(window.rate("txguard_decisions_total")) + _breakdown(ordered, skip_zero=False),
        ),
        _row("model", version),
        _row(
            "decided",
            f"p50 {_duration(p50)}   p95 {_duration(p95)}   p99 {_duration(p99)}"
            "   (accepted -> decided)",
        ),
    ]


def _applier_lines(window: ServiceWindow) -> list[str]:
    results = window.rates_by("txguard_applier_decisions_total", "result")
    p50, p95, p99 = window.quantiles(
        "txguard_end_to_end_latency_seconds", (0.5, 0.95, 0.99), stage="applied"
    )
    return [
        _row(
            "decisions",
            _rate(window.rate("txguard_applier_decisions_total"))
            + _breakdown(results, skip_zero=False),
        ),
        _row(
            "applied",
            f"p50 {_duration(p50)}   p95 {_duration(p95)}   p99 {_duration(p99)}"
            "   (accepted -> applied)",
        ),
    ]


def _row(label: str, text: str) -> str:
    return f"  {label:<{LABEL_WIDTH}}{text}"


def _breakdown(rates: Mapping[str, float], *, skip_zero: bool) -> str:
    shown = [(name, rate) for name, rate in rates.items() if rate > 0 or not skip_zero]
    if not shown:
        return ""
    return "   " + "  ".join(f"{name} {_rate(rate)}" for name, rate in shown)


def _rate(value: float | None) -> str:
    return "-/s" if value is None else f"{value:.1f}/s"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _int(text: str) -> int:
    return int(text) if text.isdigit() else -1


# -- the loop ----------------------------------------------------------------------------------

_CLEAR_SCREEN: Final = "\x1b[H\x1b[2J"


def run_status(
    targets: Sequence[StatusTarget],
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    once: bool = False,
) -> int:
    """Show the screen, refreshed every `interval_seconds` until Ctrl-C (exit 0).

    `once`: scrape twice, `interval_seconds` apart, print one screen and exit: 0 when at least
    one target answered, 1 when none did (with a message naming what to start).
    """
    if not targets:
        print("txguard status: no targets to show", file=sys.stderr)
        return 2
    if not interval_seconds > 0:
        print("txguard status: --interval must be a positive number of seconds", file=sys.stderr)
        return 2
    timeout = min(SCRAPE_TIMEOUT_SECONDS, interval_seconds)
    tty = sys.stdout.isatty()
    with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="status") as pool:

        def scrape_all() -> list[Scrape]:
            return list(pool.map(lambda target: scrape_target(target, timeout), targets))

        try:
            previous: list[Scrape] | None = None
            current = scrape_all()
            if once:
                time.sleep(interval_seconds)
                previous, current = current, scrape_all()
                sys.stdout.write(render(build_snapshot(previous, current, time.time())))
                sys.stdout.flush()
                if not any(scrape.up for scrape in current):
                    print(_nothing_answered(targets), file=sys.stderr)
                    return 1
                return 0
            while True:
                screen = render(build_snapshot(previous, current, time.time()))
                sys.stdout.write(_CLEAR_SCREEN + screen if tty else screen + "\n")
                sys.stdout.flush()
                # The next refresh is due one interval after this one started, however long
                # the scrapes took.
                next_at = max(scrape.taken_at for scrape in current) + interval_seconds
                time.sleep(max(0.0, next_at - time.monotonic()))
                previous, current = current, scrape_all()
        except KeyboardInterrupt:
            return 0


def _nothing_answered(targets: Sequence[StatusTarget]) -> str:
    where = ", ".join(f"{target.service} on {target.address}" for target in targets)
    services = sorted({target.service for target in targets} - {"relay"}) or ["transactions"]
    return (
        f"txguard status: no service answered ({where}). Start the pipeline "
        f"(`make demo`, or {', '.join(f'`txguard serve {name}`' for name in services)}), "
        "or point --target SERVICE=HOST:PORT at where the services run."
    )
