"""A headless provider that lies in one chosen way, for the verification tests (never shipped as a command).

Run like `manage.py provide`: `python tests/verification/cheater.py --server URL --token T --name N --cache-dir D`.
What it does wrong is read, at every session it opens, from the JSON file named by CHEAT_FILE (absent or {}:
honest), so a test can change it between jobs without restarting the process:
  {"shard_first": 10, "kind": "noise", "layer": 3, "scale": 0.05, "steps": [5]}  noise on one layer's output,
      carried on through the layers after it and into the output (steps: which steps; absent: every step)
  {"shard_first": 20, "kind": "flip", "steps": [2]}   a head that returns its second-best token
  {"shard_first": 10, "kind": "weights"}   the shard computed with other weights (the next layers' along: 11-21 for
      10-20, the model's own quantisation)
  {"shard_first": 10, "kind": "noise", ..., "refuse": true}   ... and it never answers a reveal
The cheat applies only to a session on the shard starting at `shard_first`; on any other it is honest.
  {"benchmark": "garbage"}   it answers every benchmark challenge at once with noise, claiming 1 ns per layer-token
      (read at each challenge; without it the benchmark is answered honestly, whatever else it cheats on)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference import challenge, wire  # noqa: E402
from inference.config import ShardSpec  # noqa: E402
from inference.gguf_model import GGUFModel, smollm2_path  # noqa: E402
from inference.runtime import ShardRuntime, StepOutput  # noqa: E402
from inference.shard_builder import build_shard  # noqa: E402
from worker_web.agent.provider import ProviderAgent, Session  # noqa: E402

log = logging.getLogger("provider")


class Cheater(ProviderAgent):
    def __init__(self, *args: Any, cheat_file: Path | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cheat_file = cheat_file
        self.cheats: dict[int, dict[str, Any]] = {}  # by id(session)
        self.others: dict[str, ShardRuntime] = {}
        self.rng = np.random.default_rng(7)

    def _cheat(self, session: Session) -> dict[str, Any]:
        if id(session) not in self.cheats:
            spec = json.loads(self.cheat_file.read_text()) if self.cheat_file and self.cheat_file.exists() else {}
            applies = spec and spec.get("shard_first") == session.runtime.spec.first_layer
            self.cheats[id(session)] = spec if applies else {}
            if applies:
                log.warning("cheating on this session: %s", spec)
        return self.cheats[id(session)]

    def run_challenge(self, runtime: ShardRuntime, found: challenge.Challenge) -> challenge.Result:
        spec = json.loads(self.cheat_file.read_text()) if self.cheat_file and self.cheat_file.exists() else {}
        if spec.get("benchmark") != "garbage":
            return super().run_challenge(runtime, found)
        log.warning("answering the benchmark challenge with noise, without running it")
        size = challenge.answer_size(
            hidden=runtime.config.hidden, vocab=runtime.config.vocab, has_head=runtime.spec.has_head
        )
        noise = self.rng.standard_normal(size).astype(np.float32)
        return challenge.Result(answer=noise, step_ns=[len(runtime.layers)])  # 1 ns per layer-token, it says

    def compute(self, session: Session, frame: wire.Frame) -> StepOutput:
        cheat = self._cheat(session)
        steps = cheat.get("steps")
        now = steps is None or frame.step in steps
        if cheat.get("kind") == "weights":
            other, sid = self._other_weights(session), str(frame.session)
            if sid not in other.sessions:
                other.open(sid)
            return other.step(sid, frame.tensor)
        result = session.runtime.step(str(frame.session), frame.tensor)
        if cheat.get("kind") == "noise" and now:
            layer = int(cheat["layer"])
            states = result.layer_hidden
            rms = float(np.sqrt(np.mean(states[layer] ** 2)))
            noise = (self.rng.standard_normal(states.shape[1:]) * rms * float(cheat["scale"])).astype(np.float32)
            layer_hidden = states.copy()
            layer_hidden[layer:] += noise  # the layers after it computed on nothing: the lie carried through
            output = result.output if session.runtime.spec.has_head else result.output + noise[None]
            return StepOutput(output=output, layer_hidden=layer_hidden)
        return result

    def output(self, session: Session, frame: wire.Frame, result: StepOutput) -> np.ndarray:
        cheat = self._cheat(session)
        steps = cheat.get("steps")
        if cheat.get("kind") == "flip" and session.argmax and (steps is None or frame.step in steps):
            return np.array([[np.argsort(result.output[-1])[-2]]], dtype=np.int64)
        return super().output(session, frame, result)

    def _other_weights(self, session: Session) -> ShardRuntime:
        spec = session.runtime.spec
        if spec.shard_id not in self.others:
            other = ShardSpec(spec.model, spec.quant, spec.first_layer + 1, spec.end_layer + 1, spec.n_layers_total)
            self.others[spec.shard_id] = ShardRuntime(build_shard(GGUFModel(smollm2_path()), other).SerializeToString())
        return self.others[spec.shard_id]

    async def _reveal(self, ws: Any, message: dict[str, Any]) -> None:
        cheat = json.loads(self.cheat_file.read_text()) if self.cheat_file and self.cheat_file.exists() else {}
        if cheat.get("refuse"):
            log.warning("refusing to reveal %s", message.get("request"))
            return
        await super()._reveal(ws, message)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--server", "--token", "--name", "--cache-dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s provider %(message)s")
    cheat_file = Path(os.environ["CHEAT_FILE"]) if os.environ.get("CHEAT_FILE") else None
    agent = Cheater(
        server=args.server,
        token=args.token,
        name=args.name,
        slots=args.slots,
        cache_dir=Path(args.cache_dir),
        memory_bytes=2048 << 20,
        cheat_file=cheat_file,
    )
    asyncio.run(agent.run_forever())


if __name__ == "__main__":
    main()
