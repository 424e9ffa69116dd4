"""Whether a consumer's group membership works, read from librdkafka's statistics.

Every statistics report of a consumer (each `STATISTICS_INTERVAL_MS`) carries its group's state:
`cgrp.state` and `cgrp.join_state`. A member that works is `up` and `steady`, with partitions or
without (an extra member beyond the partition count). During a rebalance, a broker restart or an
outage it is something else for a while, and comes back by itself.

It did not always come back: after a broker restart, a consumer was seen to stay out of its group
for good, its group coordinator unknown and a request to it never sent, while every other client
of the same cluster had reconnected. `GroupWatch` notices a membership whose reports have said for
`stall_seconds` that it does not work; the loop then asks `replace_stalled_consumer` whether to
replace its consumer:
yes when the cluster answers a new client, and the loop drops what it holds of its partitions (as
if they were lost), retires the old subscription, closes the consumer (`close_consumer`) and
subscribes a new one; no during an outage, and the loop keeps waiting for the consumer to rejoin.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException

from txguard.kafka.clients import make_admin, make_consumer
from txguard.kafka.consumer_loop import Subscription, close_consumer
from txguard.observability.exporter import kafka_statistics
from txguard.observability.metrics import ConsumerMetrics

log = logging.getLogger(__name__)

# Longer than what a working member goes through on its own: a session timeout (10 s), a
# cooperative rebalance (two rounds), a restarted broker loading its groups (13 s seen here).
STALL_SECONDS = 90.0
# How long `cluster_answers` waits for the cluster's metadata.
CLUSTER_CHECK_SECONDS = 5.0


class GroupWatch:
    """How long a consumer's reports have said, without a break, that its membership does not
    work; its `stats_cb` feeds it.

    Only reports count, and the time between the first of such a run and the latest check: a
    loop busy elsewhere for minutes (a store locked, a publish waiting for the broker) is served
    the reports queued meanwhile all at once, and librdkafka's own heartbeats keep its membership
    working in the meantime, which those reports say. Without any report, nothing is stalled.
    """

    def __init__(
        self,
        *,
        stall_seconds: float = STALL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_seconds = stall_seconds
        self._clock = clock
        # When the current run of reports of a membership that does not work was first served.
        self._failing_since: float | None = None
        # The last reported "state/join_state", for the log line of a stall.
        self.last_state = "not reported yet"

    def stats_cb(self, stats_json: str) -> None:
        """The consumer's `stats_cb`: the Kafka-health metrics first, then the group's state."""
        stats = kafka_statistics.report(stats_json)
        cgrp = stats.get("cgrp") if stats is not None else None
        if isinstance(cgrp, Mapping):
            self.observe(cgrp)

    def observe(self, cgrp: Mapping[str, Any]) -> None:
        """One report's `cgrp` object."""
        state, join_state = cgrp.get("state"), cgrp.get("join_state")
        self.last_state = f"{state}/{join_state}"
        if state == "up" and join_state == "steady":
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = self._clock()

    def stalled_seconds(self) -> float:
        """Seconds since the first of the current run of reports that the membership does not
        work; 0 when the last report said it works."""
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since

    def stalled(self) -> bool:
        return self._failing_since is not None and self.stalled_seconds() >= self.stall_seconds

    def restart(self) -> None:
        """Count a run of failing reports from now: after a check that found the cluster away,
        or once a consumer is subscribed."""
        if self._failing_since is not None:
            self._failing_since = self._clock()


def watched_consumer(
    bootstrap: str, *, group_id: str, client_id: str, stall_seconds: float, **overrides: Any
) -> tuple[Consumer, GroupWatch]:
    """A consumer that reports statistics, and the `GroupWatch` they feed."""
    watch = GroupWatch(stall_seconds=stall_seconds)
    consumer = make_consumer(
        bootstrap,
        group_id=group_id,
        client_id=client_id,
        statistics=True,
        stats_cb=watch.stats_cb,
        **overrides,
    )
    return consumer, watch


def retire_consumer(
    consumer: Consumer, subscription: Subscription, metrics: ConsumerMetrics, *, what: str
) -> None:
    """After the loop has handled its partitions as lost: count the replacement, forget the lag,
    retire the subscription's callbacks and close the consumer (within `close_consumer`'s bound)."""
    metrics.retries["consumer_replaced"].inc()
    metrics.lag.forget_all()
    subscription.retire()
    close_consumer(consumer, what=what)


def replace_stalled_consumer(watch: GroupWatch, bootstrap: str, *, what: str, group: str) -> bool:
    """Called once `watch.stalled()`: whether the loop should replace its consumer now.

    True when the cluster answers: the membership failed although the group's coordinator can be
    reached (logged at ERROR). False when it does not answer: an outage, which the consumer comes
    back from by itself; the watch counts again from now.
    """
    if not cluster_answers(bootstrap):
        log.warning(
            "%s: not a working member of group %s for %.0f s, and the cluster does not answer; "
            "waiting for it",
            what,
            group,
            watch.stalled_seconds(),
        )
        watch.restart()
        return False
    log.error(
        "%s: not a working member of group %s for %.0f s (last state %s) although the cluster "
        "answers; replacing the Kafka consumer",
        what,
        group,
        watch.stalled_seconds(),
        watch.last_state,
    )
    return True


def cluster_answers(bootstrap: str, *, timeout: float = CLUSTER_CHECK_SECONDS) -> bool:
    """Whether the cluster returns its metadata to a new client within `timeout` seconds."""
    try:
        with make_admin(bootstrap, client_id="txguard-cluster-check") as admin:
            admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        log.debug("cluster check: %s", exc)
        return False
    return True
