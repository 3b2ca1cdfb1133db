"""Anvil, the local Ethereum node, started by the project from the npm package that ships its binary.

The embedded profile (`manage.py demo`), the tests and `bench/chain.py` start one on a free port. `state` keeps the
chain across restarts: Anvil loads it at start and writes it back when stopped with SIGTERM (and every
`state_interval` seconds), so a demo run again finds its contracts where it left them.
"""

from __future__ import annotations

import json
import platform
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Anvil's well-known development accounts (its default mnemonic): public test keys, never for real money.
DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)
CHAIN_ID = 31337


def anvil_binary() -> Path:
    """The Anvil binary inside node_modules (`@foundry-rs/anvil-<os>-<arch>`, pinned in package.json)."""
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    path = ROOT / "node_modules" / "@foundry-rs" / f"anvil-{platform.system().lower()}-{arch}" / "bin" / "anvil"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make venv` (npm ci installs Anvil from package.json)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AnvilNode:
    """One Anvil process on 127.0.0.1. `start()` waits until it answers JSON-RPC; `stop()` lets it save its state."""

    def __init__(
        self,
        *,
        port: int | None = None,
        state: Path | None = None,
        state_interval: int | None = None,
        log: Path | None = None,
        block_time: float | None = None,
    ) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = state
        self.state_interval = state_interval
        self.log = log
        self.block_time = block_time
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> AnvilNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def argv(self) -> list[str]:
        argv = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(CHAIN_ID)]
        if self.state is not None:
            self.state.parent.mkdir(parents=True, exist_ok=True)
            argv += ["--state", str(self.state)]
            if self.state_interval:
                argv += ["--state-interval", str(self.state_interval)]
        if self.block_time:
            argv += ["--block-time", str(self.block_time)]
        return argv

    def start(self, timeout: float = 30) -> AnvilNode:
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        until = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.process.returncode} (log: {self.log})")
            if time.monotonic() > until:
                self.stop()
                raise TimeoutError(f"anvil did not answer on {self.url} within {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        try:
            return rpc(self.url, "eth_chainId") is not None
        except (OSError, ValueError):
            return False

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (Anvil writes its state file) or, with `kill`, SIGKILL (a crash: nothing written)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def rpc(url: str, method: str, *params: object, timeout: float = 5) -> object:
    """One JSON-RPC call without web3 (for readiness checks and Anvil's own methods such as evm_increaseTime)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise ValueError(f"{method}: {answer['error']}")
    return answer.get("result")


def increase_time(url: str, seconds: int) -> None:
    """Move the dev chain's clock forward and mine a block at the new time."""
    rpc(url, "evm_increaseTime", seconds)
    rpc(url, "evm_mine")
