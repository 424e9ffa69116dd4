"""Starting and stopping txguard services as separate processes, the way an operator runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain, commit, exit), escalating to SIGKILL after `timeout` seconds."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def exit_report(self) -> str:
        """How the process ended, with the last lines of its log."""
        return f"{self.name} exited with code {self.process.returncode}:\n" + self.log_tail()


def start_service(
    service: str, *, env: Mapping[str, str], log_dir: Path, extra_args: tuple[str, ...] = ()
) -> ServiceProcess:
    """`txguard serve SERVICE` in its own session, so a Ctrl-C in the terminal reaches only the
    demo, which then drains the services in order."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{service}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "txguard", "serve", service, *extra_args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServiceProcess(service, process, log_path)


def wait_for_grpc_serving(target: str, service: ServiceProcess, timeout: float = 60.0) -> None:
    """Poll the gRPC health service until it reports SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        # The stub's methods are attached at run time; the typing stubs do not declare them.
        stub: Any = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not service.alive():
                raise RuntimeError(service.exit_report())
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError:
                time.sleep(0.2)
                continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.2)
    raise TimeoutError(f"{service.name} did not report SERVING on {target} within {timeout:.0f}s")


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
