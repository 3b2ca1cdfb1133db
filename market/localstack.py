"""A whole market on this machine, as child processes: the ASGI server (Daphne), a Celery worker when the profile
has Redis, and headless providers. The demo, bench/pipeline.py and the end-to-end tests all start it this way,
and talk to it the way buyers do: the REST API and the job stream WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.typing import Origin

from inference import wire
from market.cpu_quota import CpuQuota, CpuQuotaError

ROOT = Path(__file__).resolve().parent.parent


def daphne_limits() -> list[str]:
    """Daphne refuses WebSocket messages over 1 MiB by default; a long prompt's prefill frame is bigger. Messages a
    little over the protocol's own limit still reach the consumer, which answers them with a clear error."""
    limit = str(wire.MAX_FRAME_BYTES + 64 * 1024)
    return ["--websocket-max-message-size", limit, "--websocket-max-frame-size", limit]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalMarket:
    """Start with `start(providers=3)`, stop with `stop()` (or use it as a context manager)."""

    def __init__(self, *, env: dict[str, str], logs: Path, port: int | None = None) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logs = logs
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.quotas: dict[str, CpuQuota] = {}  # providers started under a CPU quota, by name
        logs.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> LocalMarket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- processes ------------------------------------------------------------------------------------------------

    def manage(self, *args: str) -> str:
        """Run a management command against this market's database and return what it printed."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout.strip()

    def spawn(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def start_server(self, *, workers: bool = True) -> None:
        """Daphne, and with Redis a Celery worker and beat (`workers=False`: Daphne alone, e.g. a server restarted
        beside a worker and beat that kept running)."""
        daphne = [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            *daphne_limits(),
            "config.asgi:application",
        ]
        self.spawn("server", daphne)
        if workers and self.env.get("REDIS_URL"):
            worker = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-P",
                "threads",
                "-c",
                "16",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "warning",
            ]
            self.spawn("worker", worker)
            # Beat clears the market every few seconds and releases providers' earnings when their window closes.
            schedule = str(self.logs / "celerybeat-schedule")
            beat = [sys.executable, "-m", "celery", "-A", "config", "beat", "-s", schedule, "-l", "warning"]
            self.spawn("beat", beat)
        self.wait(lambda: self._healthy(), 60, "the server to answer /healthz/")

    def start_provider(
        self,
        name: str,
        *,
        token: str,
        slots: int = 1,
        threads: int = 1,
        commitments: bool = True,
        cpu_percent: float | None = None,
    ) -> subprocess.Popen[bytes]:
        """A headless provider process; `cpu_percent`: held to that share of one CPU by a cgroup of its own (a
        machine that many times slower, for real: its benchmark, and so its ask, shows it)."""
        argv = [
            sys.executable,
            "manage.py",
            "provide",
            "--server",
            self.url,
            "--token",
            token,
            "--slots",
            str(slots),
            "--name",
            name,
            "--cache-dir",
            str(self.logs / f"cache-{name}"),
        ]
        argv += [] if commitments else ["--no-commitments"]
        if cpu_percent is not None:
            self.quotas[name] = CpuQuota(f"{self.port}-{name}", cpu_percent)
            argv = self.quotas[name].wrap(argv)
        return self.spawn(name, argv, INFERENCE_THREADS=str(threads))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=30)
        if name in self.quotas:
            self.quotas.pop(name).remove()

    def stop(self) -> None:
        services = ("beat", "worker", "server")
        for name in [n for n in self.processes if n not in services] + list(services):
            process = self.processes.pop(name, None)
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        while self.quotas:
            try:
                self.quotas.popitem()[1].remove()
            except CpuQuotaError as exc:  # stopping goes on; the next quota made on this machine sweeps it
                print(f"warning: {exc}", file=sys.stderr)

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    # --- talking to it like a buyer -------------------------------------------------------------------------------

    def api(self, method: str, path: str, *, token: str | None, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Token {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def online_providers(self, token: str) -> list[dict[str, Any]]:
        status, body = self.api("GET", "/api/providers/", token=token)
        return [p for p in body if p["ns_per_layer_token"]] if status == 200 else []

    def wait_providers(self, count: int, token: str, timeout: float = 120) -> None:
        self.wait(lambda: len(self.online_providers(token)) >= count, timeout, f"{count} benchmarked providers")

    def submit(self, token: str, **job: Any) -> dict[str, Any]:
        status, body = self.api("POST", "/api/jobs/", token=token, body=job)
        if status != 201:
            raise RuntimeError(f"job refused ({status}): {body}")
        return dict(body)

    def stream(
        self,
        job_id: int,
        token: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 300,
        *,
        follow_verification: bool = False,
    ) -> list[dict[str, Any]]:
        """Every event of the job's stream until `done` (snapshot, token..., done); `follow_verification`: on until
        the server closes it, after the verification's verdict (done, verification...)."""
        return asyncio.run(self._stream(job_id, token, on_event, timeout, follow_verification))

    async def _stream(
        self, job_id: int, token: str, on_event: Any, timeout: float, follow: bool
    ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        url = f"ws://127.0.0.1:{self.port}/ws/jobs/{job_id}/?token={token}"
        url += "&follow=verification" if follow else ""
        async with asyncio.timeout(timeout), connect(url, origin=Origin(self.url), proxy=None) as ws:
            async for raw in ws:
                event = json.loads(raw)
                events.append(event)
                if on_event is not None:
                    on_event(event)
                if event["type"] == "error" or (event["type"] == "done" and not follow):
                    break
        return events

    # --- helpers --------------------------------------------------------------------------------------------------

    def check_running(self) -> None:
        """Raise, with the end of its log, when a process of the market has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_text(name)[-3000:]}")

    def _healthy(self) -> bool:
        self.check_running()
        with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/healthz/", timeout=2) as response:
            return bool(response.status == 200)
        return False

    @staticmethod
    def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
        until = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > until:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.25)


def stream_tokens(events: list[dict[str, Any]]) -> Iterator[int]:
    """The token ids a stream delivered, in order: the snapshot's, then each token event's."""
    for event in events:
        if event["type"] == "snapshot":
            yield from event["tokens"]
        elif event["type"] == "token":
            yield event["token"]
