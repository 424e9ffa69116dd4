"""`txguard` entry point: subcommands only; each one hands over to the module that owns it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path

from txguard.config import ConfigError, Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="txguard",
        description="Transaction processing with real-time fraud detection on Apache Kafka.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = commands.add_parser("kafka", help="run a local single-node Kafka broker")
    kafka.add_argument("action", choices=["fetch", "up", "down", "status", "topics"])

    serve = commands.add_parser("serve", help="run one txguard service in the foreground")
    serve.add_argument(
        "service", choices=["transactions", "relay", "detector", "applier", "terminal-risk"]
    )
    serve.add_argument(
        "--no-relay",
        action="store_true",
        help="transactions: do not run the outbox relay inside this process",
    )

    demo = commands.add_parser("demo", help="run the whole pipeline with a load generator")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    demo.add_argument("--rate", type=float, default=200.0, help="transactions per second")
    demo.add_argument("--accounts", type=int, default=500, help="number of simulated accounts")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the load generator")
    simulate = commands.add_parser(
        "simulate",
        help="the handbook's simulated transactions, into a file or streamed into the API",
    )
    target = simulate.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", type=Path, help="FILE.csv or FILE.parquet")
    target.add_argument(
        "--stream", action="store_true", help="send them to the gRPC API, labels to Kafka"
    )
    simulate.add_argument(
        "--rate", type=float, default=200.0, help="--stream: transactions per second"
    )
    simulate.add_argument(
        "--duration", type=float, default=None, help="--stream: stop after this many seconds"
    )
    simulate.add_argument(
        "--label-delay-days",
        type=float,
        default=7.0,
        help="--stream: event time after which a fraud's label is published",
    )
    simulate.add_argument("--customers", type=int, default=5000)
    simulate.add_argument("--terminals", type=int, default=10000)
    simulate.add_argument("--days", type=int, default=183)
    simulate.add_argument("--start-date", type=date.fromisoformat, default=date(2018, 4, 1))
    simulate.add_argument("--radius", type=float, default=5.0)
    simulate.add_argument("--seed", type=int, default=0)

    replay = commands.add_parser(
        "replay", help="push a dataset through the real pipeline; write features and scores"
    )
    replay.add_argument("--input", type=Path, required=True, help="dataset, CSV or Parquet")
    replay.add_argument("--output", type=Path, required=True, help="FILE.csv or FILE.parquet")
    replay.add_argument("--model", type=Path, default=None, help="model artifact directory")
    replay.add_argument(
        "--label-delay-days", type=float, default=7.0, help="when a fraud label becomes known"
    )
    replay.add_argument("--keep-topics", action="store_true", help="keep the replay's topics")

    status = commands.add_parser(
        "status", help="live view of every service's metrics: lag, throughput, latency, DLQ"
    )
    status.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT",
        help="where a service's /metrics is (repeatable; default: local default ports)",
    )
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    status.add_argument("--once", action="store_true", help="print one screen and exit")

    bench = commands.add_parser(
        "bench", help="benchmark: Kafka ceiling, detector, Quix Streams peer, scaling, end to end"
    )
    bench.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness")
    bench.add_argument(
        "--scenarios",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=None,
        help="comma-separated: ceiling, detector, peer, scaling, e2e (default: all)",
    )
    bench.add_argument(
        "--output",
        type=Path,
        default=None,
        help="directory for the results (default: benchmarks/results)",
    )
    bench.add_argument("--keep-topics", action="store_true", help="keep the benchmark's topics")
    bench.add_argument(
        "--relay",
        choices=("in-process", "own-process"),
        default="in-process",
        help="where the end-to-end pipeline's outbox relay runs: inside serve transactions "
        "(default), or as serve relay beside serve transactions --no-relay",
    )
    bench.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also rewrite this README's results block with the targets table and plot",
    )

    model = commands.add_parser("model", help="train fraud models")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    train = model_commands.add_parser("train", help="train models on a dataset's training window")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="dataset with TX_FRAUD, CSV or Parquet")
    source.add_argument("--simulated", action="store_true", help="the simulator's default dataset")
    train.add_argument("--output", type=Path, required=True, help="directory for the artifacts")
    _protocol_arguments(train)

    evaluate = commands.add_parser(
        "evaluate", help="the handbook's evaluation protocol through the real pipeline"
    )
    evaluate.add_argument(
        "--input", type=Path, default=None, help="dataset with TX_FRAUD (default: simulated)"
    )
    evaluate.add_argument(
        "--json", type=Path, default=None, help="also write the results as JSON here (- for stdout)"
    )
    evaluate.add_argument(
        "--batch-features",
        action="store_true",
        help="compute features in batch instead of replaying through the pipeline (faster)",
    )
    _protocol_arguments(evaluate)
    return parser


def _protocol_arguments(parser: argparse.ArgumentParser) -> None:
    from txguard.fraud.models.evaluation import DEFAULT_TRAIN_END, DEFAULT_TRAIN_START
    from txguard.fraud.models.offline import HANDBOOK_KINDS

    parser.add_argument(
        "--features",
        choices=["handbook", "all"],
        default="handbook",
        help="the handbook's 15 features, or all of txguard's (default: handbook)",
    )
    parser.add_argument(
        "--kinds",
        type=lambda text: [kind.strip() for kind in text.split(",") if kind.strip()],
        default=list(HANDBOOK_KINDS),
        help="comma-separated: logistic_regression, random_forest, xgboost, isolation_forest, "
        "blend (default: the handbook's three)",
    )
    parser.add_argument("--train-start", type=date.fromisoformat, default=DEFAULT_TRAIN_START)
    parser.add_argument("--train-end", type=date.fromisoformat, default=DEFAULT_TRAIN_END)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="txguard's tuned hyper-parameters instead of the handbook's defaults",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"txguard: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "kafka":
        from txguard.kafka.commands import run_kafka_command

        return run_kafka_command(args.action, settings)
    if args.command == "serve":
        from txguard.services import run_service

        return run_service(args.service, settings, relay=not args.no_relay)
    if args.command == "demo":
        from txguard.demo.runner import DemoOptions, run_demo

        return run_demo(
            settings,
            DemoOptions(
                duration_seconds=args.duration,
                rate_per_second=args.rate,
                accounts=args.accounts,
                seed=args.seed,
            ),
        )
    if args.command == "simulate":
        from txguard.simulate.commands import run_simulate_command

        return run_simulate_command(
            settings,
            args.output,
            stream=args.stream,
            rate=args.rate,
            duration=args.duration,
            label_delay_days=args.label_delay_days,
            customers=args.customers,
            terminals=args.terminals,
            days=args.days,
            start_date=args.start_date,
            radius=args.radius,
            seed=args.seed,
        )
    if args.command == "replay":
        from txguard.replay.runner import ReplayOptions, run_replay_command

        return run_replay_command(
            settings,
            ReplayOptions(
                input=args.input,
                output=args.output,
                model_dir=args.model,
                label_delay_days=args.label_delay_days,
                keep_topics=args.keep_topics,
            ),
        )
    if args.command == "bench":
        from txguard.bench.runner import SCENARIOS, BenchOptions, run_bench

        bench_options = BenchOptions(
            smoke=args.smoke,
            scenarios=args.scenarios or list(SCENARIOS),
            keep_topics=args.keep_topics,
            readme=args.readme,
            relay=args.relay,
        )
        if args.output is not None:
            bench_options = replace(bench_options, output_dir=args.output)
        return run_bench(settings, bench_options)
    if args.command == "status":
        from txguard.observability.status import parse_target, run_status, status_targets

        try:
            targets = status_targets([parse_target(text) for text in args.target])
        except ValueError as exc:
            print(f"txguard status: {exc}", file=sys.stderr)
            return 2
        return run_status(targets, interval_seconds=args.interval, once=args.once)
    if args.command in ("model", "evaluate"):
        from txguard.fraud.model_commands import (
            ProtocolOptions,
            run_evaluate_command,
            run_train_command,
        )

        options = ProtocolOptions(
            input=args.input,
            feature_set=args.features,
            kinds=args.kinds,
            train_start=args.train_start,
            train_end=args.train_end,
            seed=args.seed,
            tuned=args.tuned,
        )
        if args.command == "model":
            return run_train_command(settings, options, args.output)
        return run_evaluate_command(
            settings,
            options,
            json_output=args.json,
            through_pipeline=not args.batch_features,
        )
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
