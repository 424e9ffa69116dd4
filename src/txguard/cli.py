"""`txguard` entry point: subcommands only; each one hands over to the module that owns it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
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
        "simulate", help="generate the handbook's simulated transactions into a file"
    )
    simulate.add_argument("--output", type=Path, required=True, help="FILE.csv or FILE.parquet")
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
    return parser


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
            args.output,
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
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
