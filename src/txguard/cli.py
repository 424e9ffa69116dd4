"""`txguard` entry point: subcommands only; each one hands over to the module that owns it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
