"""`txguard status` from two hand-made scrapes: rates, percentiles, and the screen they make."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable

import pytest

from tests.conftest import free_tcp_port
from txguard.observability import status
from txguard.observability.status import (
    Scrape,
    ServiceWindow,
    StatusTarget,
    build_snapshot,
    histogram_quantile,
    parse_exposition,
    parse_target,
    render,
    run_status,
    status_targets,
)

TRANSACTIONS = StatusTarget("transactions", "http://127.0.0.1:9464/metrics")
RELAY = StatusTarget("relay", "http://127.0.0.1:9465/metrics")
DETECTOR = StatusTarget("detector", "http://127.0.0.1:9466/metrics")
APPLIER = StatusTarget("applier", "http://127.0.0.1:9467/metrics")

TOPIC = "txguard.transactions.v1"


def api_histogram(ok: tuple[int, int, int], invalid: tuple[int, int, int]) -> str:
    """Cumulative counts of the buckets 1 ms, 2.5 ms and 5 ms of two series."""
    lines = []
    for code, counts in (("OK", ok), ("INVALID_ARGUMENT", invalid)):
        labels = f'code="{code}",method="CreateTransaction"'
        for bound, count in zip(
            ("0.001", "0.0025", "0.005", "+Inf"), (*counts, counts[-1]), strict=True
        ):
            lines.append(
                f'txguard_api_request_duration_seconds_bucket{{{labels},le="{bound}"}} {count}'
            )
        lines.append(f"txguard_api_request_duration_seconds_count{{{labels}}} {counts[-1]}")
    return "\n".join(lines)


def transactions_text(accepted: int, invalid: int, api: str, published: int) -> str:
    return f"""# HELP txguard_service_info Which txguard service this process runs, and its version
# TYPE txguard_service_info gauge
txguard_service_info{{service="transactions",version="0.1.0"}} 1.0
# HELP txguard_transactions_accepted_total New transactions
# TYPE txguard_transactions_accepted_total counter
txguard_transactions_accepted_total {accepted}
# HELP txguard_transactions_replayed_total Idempotent retries
# TYPE txguard_transactions_replayed_total counter
txguard_transactions_replayed_total 3.0
# HELP txguard_transactions_rejected_total Create requests refused, by reason
# TYPE txguard_transactions_rejected_total counter
txguard_transactions_rejected_total{{reason="invalid_argument"}} {invalid}
txguard_transactions_rejected_total{{reason="store_unavailable"}} 0.0
# HELP txguard_api_request_duration_seconds Server-side time
# TYPE txguard_api_request_duration_seconds histogram
{api}
# HELP txguard_outbox_backlog_events Outbox events not yet acknowledged
# TYPE txguard_outbox_backlog_events gauge
txguard_outbox_backlog_events 7.0
# HELP txguard_outbox_oldest_unpublished_age_seconds Age of the oldest
# TYPE txguard_outbox_oldest_unpublished_age_seconds gauge
txguard_outbox_oldest_unpublished_age_seconds 0.25
# HELP txguard_outbox_records_published_total Published, by topic
# TYPE txguard_outbox_records_published_total counter
txguard_outbox_records_published_total{{topic="{TOPIC}"}} {published}
# HELP txguard_end_to_end_latency_seconds Acceptance to a stage
# TYPE txguard_end_to_end_latency_seconds histogram
txguard_end_to_end_latency_seconds_bucket{{le="0.01",stage="published"}} {published}
txguard_end_to_end_latency_seconds_bucket{{le="+Inf",stage="published"}} {published}
txguard_end_to_end_latency_seconds_count{{stage="published"}} {published}
"""


# Two scrapes 2 s apart: 200 accepted, 4 rejected; the API answered 200 requests of which
# 100 within 1 ms, 90 more within 2.5 ms and the last 10 within 5 ms.
TRANSACTIONS_BEFORE = transactions_text(
    1000, 10, api_histogram(ok=(500, 580, 600), invalid=(10, 10, 10)), 990
)
TRANSACTIONS_AFTER = transactions_text(
    1200, 14, api_histogram(ok=(596, 766, 796), invalid=(14, 14, 14)), 1190
)


def detector_text(
    consumed: int, outcomes: tuple[int, int, int], decided: tuple[int, int, int], dlq: int
) -> str:
    """`decided`: cumulative counts of the end-to-end buckets 50 ms, 100 ms, 200 ms."""
    approve, review, decline = outcomes
    buckets = "\n".join(
        f'txguard_end_to_end_latency_seconds_bucket{{le="{bound}",stage="decided"}} {count}'
        for bound, count in zip(
            ("0.05", "0.1", "0.2", "+Inf"), (*decided, decided[-1]), strict=True
        )
    )
    return f"""# TYPE txguard_consumer_records_consumed_total counter
txguard_consumer_records_consumed_total{{service="detector",topic="{TOPIC}"}} {consumed}
# TYPE txguard_consumer_lag_records gauge
txguard_consumer_lag_records{{partition="0",service="detector",topic="{TOPIC}"}} 0.0
txguard_consumer_lag_records{{partition="10",service="detector",topic="{TOPIC}"}} 12.0
txguard_consumer_lag_records{{partition="2",service="detector",topic="{TOPIC}"}} 3.0
# TYPE txguard_consumer_lag_seconds gauge
txguard_consumer_lag_seconds{{partition="0",service="detector",topic="{TOPIC}"}} 0.0
txguard_consumer_lag_seconds{{partition="10",service="detector",topic="{TOPIC}"}} 0.4
txguard_consumer_lag_seconds{{partition="2",service="detector",topic="{TOPIC}"}} 1.5
# TYPE txguard_retries_total counter
txguard_retries_total{{reason="commit",service="detector"}} 1.0
# TYPE txguard_dead_letter_records_total counter
txguard_dead_letter_records_total{{reason="undecodable",service="detector"}} {dlq}
txguard_dead_letter_records_total{{reason="invalid",service="detector"}} 1.0
# TYPE txguard_duplicates_dropped_total counter
txguard_duplicates_dropped_total{{service="detector"}} 5.0
# TYPE txguard_decisions_total counter
txguard_decisions_total{{outcome="approve"}} {approve}
txguard_decisions_total{{outcome="review"}} {review}
txguard_decisions_total{{outcome="decline"}} {decline}
# TYPE txguard_terminal_table_watermark_lag_seconds gauge
txguard_terminal_table_watermark_lag_seconds{{service="detector"}} 2.5
# TYPE txguard_model_info gauge
txguard_model_info{{kind="xgboost",version="2026.01.3"}} 1.0
# TYPE txguard_end_to_end_latency_seconds histogram
{buckets}
"""


# 4 s apart: 400 consumed, 400 decided (360 approve, 30 review, 10 decline), 2 dead letters;
# of the 400 decisions 200 took up to 50 ms, 180 up to 100 ms, 20 up to 200 ms.
DETECTOR_BEFORE = detector_text(5000, (900, 80, 20), (600, 900, 1000), 3)
DETECTOR_AFTER = detector_text(5400, (1260, 110, 30), (800, 1280, 1400), 5)


def scrape(target: StatusTarget, at: float, text: str) -> Scrape:
    return Scrape(target, at, parse_exposition(text))


def down(target: StatusTarget, at: float) -> Scrape:
    return Scrape(target, at, error="connection refused")


def transactions_window() -> ServiceWindow:
    return ServiceWindow(
        scrape(TRANSACTIONS, 102.0, TRANSACTIONS_AFTER),
        scrape(TRANSACTIONS, 100.0, TRANSACTIONS_BEFORE),
    )


def detector_window() -> ServiceWindow:
    return ServiceWindow(
        scrape(DETECTOR, 204.0, DETECTOR_AFTER), scrape(DETECTOR, 200.0, DETECTOR_BEFORE)
    )


def test_rates_are_counter_increases_over_the_time_between_scrapes() -> None:
    window = transactions_window()
    assert window.seconds == 2.0
    assert window.rate("txguard_transactions_accepted_total") == 100.0
    assert window.rate("txguard_transactions_replayed_total") == 0.0
    assert window.rates_by("txguard_transactions_rejected_total", "reason") == {
        "invalid_argument": 2.0,
        "store_unavailable": 0.0,
    }
    detector = detector_window()
    assert detector.rate("txguard_consumer_records_consumed_total", service="detector") == 100.0
    assert detector.rates_by("txguard_decisions_total", "outcome") == {
        "approve": 90.0,
        "review": 7.5,
        "decline": 2.5,
    }
    assert detector.rate("txguard_dead_letter_records_total", service="detector") == 0.5
    # Labelled counters appear with their first event: no series yet is a rate of 0.
    assert detector.rate("txguard_consumer_records_consumed_total", service="applier") == 0.0
    assert detector.rates_by("txguard_retries_total", "reason", service="applier") == {}


def test_a_counter_that_went_down_was_restarted_and_counts_from_zero() -> None:
    before = scrape(TRANSACTIONS, 100.0, transactions_text(5000, 10, "", 0))
    after = scrape(TRANSACTIONS, 110.0, transactions_text(40, 10, "", 0))
    assert ServiceWindow(after, before).rate("txguard_transactions_accepted_total") == 4.0


def test_no_rate_without_an_earlier_answer() -> None:
    after = scrape(TRANSACTIONS, 102.0, TRANSACTIONS_AFTER)
    assert ServiceWindow(after).rate("txguard_transactions_accepted_total") is None
    window = ServiceWindow(after, down(TRANSACTIONS, 100.0))
    assert window.seconds is None
    assert window.quantiles("txguard_api_request_duration_seconds", (0.5,)) == (None,)


def test_percentiles_interpolate_within_the_bucket_of_the_interval() -> None:
    # Both series together: 100 within 1 ms, 190 within 2.5 ms, 200 within 5 ms.
    p50, p99 = transactions_window().quantiles("txguard_api_request_duration_seconds", (0.5, 0.99))
    assert p50 == pytest.approx(0.001)  # rank 100: the top of the first bucket
    assert p99 == pytest.approx(0.0025 + 0.0025 * 8 / 10)  # rank 198: 8 of 10 into (2.5, 5] ms
    # Decided: 200 within 50 ms, 380 within 100 ms, 400 within 200 ms.
    p50, p95, p99 = detector_window().quantiles(
        "txguard_end_to_end_latency_seconds", (0.5, 0.95, 0.99), stage="decided"
    )
    assert p50 == pytest.approx(0.05)
    assert p95 == pytest.approx(0.1)  # rank 380: exactly the top of (50, 100] ms
    assert p99 == pytest.approx(0.1 + 0.1 * 16 / 20)


def test_histogram_quantile_matches_prometheus_at_the_edges() -> None:
    inf = math.inf
    assert histogram_quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) is None
    # A rank in the +Inf bucket: the highest finite bound.
    assert histogram_quantile(0.99, [(0.1, 10.0), (0.2, 50.0), (inf, 100.0)]) == 0.2
    # The first bucket interpolates from 0.
    assert histogram_quantile(0.25, [(0.4, 100.0), (inf, 100.0)]) == pytest.approx(0.1)
    # Buckets arrive in any order; a count that went down (racing scrape) is lifted.
    assert histogram_quantile(0.5, [(inf, 4.0), (0.2, 3.0), (0.1, 2.0), (0.3, 2.5)]) == 0.1


def test_the_screen_shows_each_service(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = build_snapshot(
        [
            scrape(TRANSACTIONS, 100.0, TRANSACTIONS_BEFORE),
            down(RELAY, 100.0),
            scrape(DETECTOR, 98.0, DETECTOR_BEFORE),
            down(APPLIER, 100.0),
        ],
        [
            scrape(TRANSACTIONS, 102.0, TRANSACTIONS_AFTER),
            down(RELAY, 102.0),
            scrape(DETECTOR, 102.0, DETECTOR_AFTER),
            down(APPLIER, 102.0),
        ],
        taken_at=1_764_380_000.0,
    )
    screen = render(snapshot)
    lines = screen.splitlines()

    def line(pattern: str) -> str:
        found = [text for text in lines if re.search(pattern, text)]
        assert len(found) == 1, f"{pattern!r} in:\n{screen}"
        return found[0]

    assert lines[0].startswith("txguard status  2025-11-29 01:33:20 UTC  ")
    assert "over the last 4.0 s" in lines[0]
    assert line(r"^transactions ").endswith("127.0.0.1:9464  up  txguard 0.1.0")
    assert line(r"^  accepted ") == "  accepted     100.0/s  (total 1,200)   replayed 0.0/s"
    assert line(r"^  rejected ") == "  rejected     2.0/s   invalid_argument 2.0/s"
    assert line(r"^  API latency") == "  API latency  p50 1.0 ms   p99 4.5 ms"
    assert (
        line(r"^  outbox ")
        == "  outbox       backlog 7 events   oldest 250.0 ms   published 100.0/s"
    )
    assert line(r"^relay ") == (
        "relay  127.0.0.1:9465  not running alone: the relay runs inside transactions (see above)"
    )
    assert line(r"^detector ") == "detector  127.0.0.1:9466  up"
    assert line(r"^  consumed ") == "  consumed     100.0/s"
    assert (
        line(r"^  lag ")
        == "  lag          max 12 records, 1.50 s   (3 partitions, records/age each)"
    )
    # Partitions in numeric order, records/seconds each.
    assert line(f"{TOPIC}:").strip() == (f"{TOPIC}:  p0 0/0.0 ms  p2 3/1.50 s  p10 12/400.0 ms")
    assert line(r"^  errors ") == "  errors       retries 0.0/s   DLQ 6 (0.5/s)   duplicates 5"
    assert line(r"^  table lag ") == "  table lag    2.50 s behind the transactions (event time)"
    assert line(r"^  decisions ") == (
        "  decisions    100.0/s   approve 90.0/s  review 7.5/s  decline 2.5/s"
    )
    assert line(r"^  model ") == "  model        2026.01.3 (xgboost)"
    assert line(r"^  decided ") == (
        "  decided      p50 50.0 ms   p95 100.0 ms   p99 180.0 ms   (accepted -> decided)"
    )
    assert line(r"^applier ") == (
        "applier  127.0.0.1:9467  DOWN (connection refused); start it: txguard serve applier"
    )


def test_the_first_screen_has_totals_but_no_rates() -> None:
    screen = render(build_snapshot(None, [scrape(DETECTOR, 1.0, DETECTOR_AFTER)], 0.0))
    assert "first scrape: rates and percentiles from the next refresh" in screen
    assert "  consumed     -/s\n" in screen
    assert "  decided      p50 -   p95 -   p99 -" in screen
    assert "DLQ 6 (-/s)" in screen


def test_a_table_without_watermark_is_not_shown_as_a_delay() -> None:
    text = DETECTOR_AFTER.replace("} 2.5\n", "} 9.2e15\n")
    screen = render(build_snapshot(None, [scrape(DETECTOR, 1.0, text)], 0.0))
    assert "  table lag    no table watermark yet\n" in screen


def test_a_relay_down_is_down_when_no_transactions_process_runs_one() -> None:
    screen = render(build_snapshot(None, [down(RELAY, 1.0)], 0.0))
    assert "relay  127.0.0.1:9465  DOWN (connection refused); start it: txguard serve" in screen


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("detector=10.0.0.5:9476", "http://10.0.0.5:9476/metrics"),
        ("applier=:19467", "http://127.0.0.1:19467/metrics"),
        ("relay=19465", "http://127.0.0.1:19465/metrics"),
        ("terminal-risk=metrics.internal", "http://metrics.internal:9468/metrics"),
        ("transactions=[::1]:9464", "http://[::1]:9464/metrics"),
    ],
)
def test_parse_target(text: str, url: str) -> None:
    target = parse_target(text)
    assert target.url == url
    assert target.service == text.split("=")[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1:9466", "--target expects SERVICE=HOST:PORT"),
        ("detector=", "--target expects SERVICE=HOST:PORT"),
        ("fraud=127.0.0.1:9466", "unknown service 'fraud'"),
        ("detector=host:http", "the port must be a number from 1 to 65535"),
        ("detector=host:70000", "the port must be a number from 1 to 65535"),
        ("detector=http://host:9466", "is not a host name or address"),
    ],
)
def test_parse_target_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_target(text)


def test_targets_replace_the_default_of_their_service() -> None:
    second = parse_target("detector=:9476")
    first = parse_target("detector=:9466")
    targets = status_targets([second, first])
    assert [t.service for t in targets] == [
        "transactions",
        "relay",
        "detector",
        "detector",
        "applier",
        "terminal-risk",
    ]
    assert targets[2:4] == [second, first]
    assert status_targets()[0] == TRANSACTIONS


def dead_targets() -> list[StatusTarget]:
    return [
        StatusTarget("transactions", f"http://127.0.0.1:{free_tcp_port()}/metrics"),
        StatusTarget("detector", f"http://127.0.0.1:{free_tcp_port()}/metrics"),
    ]


def test_once_with_nothing_answering_exits_1_and_says_what_to_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_status(dead_targets(), interval_seconds=0.05, once=True) == 1
    out, err = capsys.readouterr()
    assert out.count("DOWN (connection refused)") == 2
    assert err.startswith("txguard status: no service answered (transactions on 127.0.0.1:")
    assert "`txguard serve detector`, `txguard serve transactions`" in err
    assert "--target SERVICE=HOST:PORT" in err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_live_view_refreshes_until_ctrl_c(monkeypatch: pytest.MonkeyPatch, tty: bool) -> None:
    out = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(status.sys, "stdout", out)
    sleeps: list[float] = []
    real_sleep: Callable[[float], None] = status.time.sleep

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(status.time, "sleep", sleep)
    assert run_status(dead_targets(), interval_seconds=0.5) == 0
    screens = out.getvalue()
    assert screens.count("txguard status  ") == 3
    # A terminal is cleared before each screen; anything else gets one block after another.
    assert screens.count("\x1b[H\x1b[2J") == (3 if tty else 0)
    assert all(0 <= seconds <= 0.5 for seconds in sleeps)
