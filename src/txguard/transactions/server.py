"""The gRPC server of the transaction API: TransactionService, health checking and reflection.

Shutdown, in order: health goes NOT_SERVING (watchers see it at once) -> the server stops accepting
calls and gives in-flight ones `grace_seconds` to finish -> the writer commits everything it was
handed -> the store connections close. Nothing accepted is lost: a call cancelled by the grace
deadline has either been handed to the writer (and is committed; a retry replays it) or was never
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from txguard.config import ConfigError, Settings
from txguard.schema.v1 import service_pb2, service_pb2_grpc
from txguard.store.sqlite import SqliteStore
from txguard.transactions.card import CardTokenizer, load_card_key
from txguard.transactions.service import DEFAULT_STREAM_WINDOW, TransactionService
from txguard.transactions.writer import (
    DEFAULT_CHECKPOINT_SECONDS,
    DEFAULT_MAX_BATCH,
    TransactionReader,
    TransactionWriter,
)

log = logging.getLogger(__name__)

SERVICE_NAME: Final = service_pb2.DESCRIPTOR.services_by_name["TransactionService"].full_name
SHUTDOWN_GRACE_SECONDS: Final = 10.0
# 80 MiB of 4 KiB pages: reached only if background checkpoints fall far behind.
WRITER_AUTOCHECKPOINT_PAGES: Final = 20_000

_SERVER_OPTIONS: Final = (
    # gRPC sets SO_REUSEPORT by default: a second server would then share the port silently
    # instead of failing to bind.
    ("grpc.so_reuseport", 0),
)


def _check_addr(addr: str) -> None:
    if addr.startswith(("unix:", "unix-abstract:")):
        return
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"TXGUARD_GRPC_ADDR must be host:port (e.g. 127.0.0.1:50051), got {addr!r}"
        )


async def serve(
    settings: Settings,
    stopping: asyncio.Event,
    *,
    started: Callable[[int], None] | None = None,
    grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
    max_batch: int = DEFAULT_MAX_BATCH,
    stream_window: int = DEFAULT_STREAM_WINDOW,
) -> None:
    """Serve the transaction API on `settings.grpc_addr` until `stopping` is set.

    `started(port)` is called once the server listens (the bound port, useful with port 0).
    Raises ConfigError, before listening, when the card token key is missing or the address
    cannot be bound.
    """
    tokenizer = CardTokenizer(load_card_key(settings))
    _check_addr(settings.grpc_addr)
    store_path = settings.store_path
    writer = TransactionWriter(
        # The writer's WAL is checkpointed by the writer's own background thread; the
        # connection's auto-checkpoint stays only as a bound should that thread fall behind.
        lambda: SqliteStore(store_path, autocheckpoint_pages=WRITER_AUTOCHECKPOINT_PAGES),
        asyncio.get_running_loop(),
        max_batch=max_batch,
        checkpoint_seconds=DEFAULT_CHECKPOINT_SECONDS,
    )
    writer.start()
    reader = TransactionReader(lambda: SqliteStore(store_path))
    try:
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        service_pb2_grpc.add_TransactionServiceServicer_to_server(
            TransactionService(
                tokenizer=tokenizer,
                writer=writer,
                reader=reader,
                stream_window=stream_window,
                transactions_topic=settings.topics.transactions,
            ),
            server,
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            port = server.add_insecure_port(settings.grpc_addr)
        except RuntimeError:
            raise ConfigError(
                f"cannot listen on {settings.grpc_addr} (TXGUARD_GRPC_ADDR): the port is in use "
                "or the host is not an address of this machine; stop the other process or set "
                "TXGUARD_GRPC_ADDR to a free host:port"
            ) from None
        await server.start()
        try:
            for name in (health.OVERALL_HEALTH, SERVICE_NAME):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info("transaction API listening on port %d (%s)", port, settings.grpc_addr)
            if started is not None:
                started(port)
            await stopping.wait()
            log.info("transaction API shutting down (grace %.1fs)", grace_seconds)
            await health_servicer.enter_graceful_shutdown()
        finally:
            await server.stop(grace_seconds)
    finally:
        # Only after the server stopped: no handler can submit any more.
        await asyncio.to_thread(writer.close)
        await asyncio.to_thread(reader.close)
        log.info(
            "transaction writer closed: %d records in %d batches",
            writer.records_written,
            writer.batches_written,
        )
