"""bench/webgpu.py's harness on this machine: the tab's own worker in Debian's Chromium (WASM: no GPU here), the tiny
Llama's chain greedy through the tab and natively, by page commands and through the protocol (a WebSocket server
playing docs/protocol.md's server side). What runs only on the GPU machine (the WebGPU backend, the headless shell
and its libraries) is not covered here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import webgpu, webgpu_protocol, webgpu_tab
from config import finders
from inference.runtime import ShardRuntime
from worker_web.testing.tab_driver import CHROMIUM


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, ShardRuntime]]:
    """A bundle of the tiny model's shards (its chains and whole-model shards), its manifest and native runtimes."""
    bundle = tmp_path_factory.mktemp("webgpu") / "bundle"
    (bundle / "shards").mkdir(parents=True)
    (bundle / "onnxruntime-web").symlink_to(webgpu.ROOT / "node_modules" / "onnxruntime-web" / "dist")
    manifest = {"tiny": webgpu._pack_tiny(bundle), "real": {"shards": []}}
    shards = [s for chain in manifest["tiny"]["chains"].values() for s in chain]
    shards += list(manifest["tiny"]["whole"].values())
    natives = {s["sha256"]: ShardRuntime(bundle / "shards" / f"{s['sha256']}.onnx") for s in shards}
    return bundle, manifest, natives


def test_the_tab_generates_the_native_greedy_tokens_inside_the_tolerance(
    tiny: tuple[Path, dict[str, Any], dict[str, ShardRuntime]], tmp_path: Path
) -> None:
    bundle, manifest, natives = tiny
    with webgpu_tab.browser(Path(CHROMIUM), bundle, webgpu=False, log=tmp_path / "chromium.log") as (tab, hello):
        result = webgpu_tab.measure_backend(tab, hello, bundle, manifest, natives, rounds=1)
    assert hello["device"]["backend"] == "wasm"
    for quant in ("f32", "q4"):
        for run in result["tiny"][quant]:
            assert run["tab"] == run["native"]
            for shard in run["shards"].values():
                assert max(layer["layer_excess"] for layer in shard["layers"]) < 1 / 8


def test_the_tab_serves_greedy_jobs_through_the_protocol(
    tiny: tuple[Path, dict[str, Any], dict[str, ShardRuntime]], tmp_path: Path
) -> None:
    bundle, manifest, natives = tiny
    plan = webgpu_protocol.plan(manifest, natives, bundle)
    log = tmp_path / "chromium.log"
    with (
        webgpu_protocol.server() as server,
        webgpu_tab.browser(Path(CHROMIUM), bundle, webgpu=False, log=log, socket=server.url) as (tab, _),
    ):
        result = server.run(tab, plan)
    assert result["hello"]["kind"] == "browser" and result["hello"]["backend"] == "wasm"
    assert result["benchmark"]["passed"], result["benchmark"]
    assert sorted(result["greedy"]) == ["f32", "q4"]
    for quant in ("f32", "q4"):
        assert len(result["greedy"][quant]) == len(manifest["tiny"]["prompts"])
        for job in result["greedy"][quant]:
            assert job["tab"] == job["native"]
            assert len(job["tab"]) == webgpu_protocol.GREEDY_TOKENS
            assert job["commits"] == webgpu_protocol.GREEDY_TOKENS, "a commitment for every step served"
            assert job["reveal"]["proofs_verified"] == webgpu_protocol.GREEDY_TOKENS
            assert job["reveal"]["layer_excess"] < 1 / 8
    assert result["commits"] == 2 * len(manifest["tiny"]["prompts"]) * webgpu_protocol.GREEDY_TOKENS
    brief = webgpu_protocol.summary(result)
    assert brief["tiny f32 greedy agrees"] and brief["tiny q4 greedy agrees"]


def test_the_files_it_carries_are_the_ones_the_tab_loads() -> None:
    assert finders.OnnxRuntimeWebFinder.files == webgpu.ORT_FILES  # written out there: config.finders needs Django


def test_a_run_of_other_shards_is_added_to_the_earlier_results() -> None:
    def result(shards: list[str], seconds: float, backends: dict[str, object]) -> dict[str, object]:
        return {"native_ms_per_layer_token": {s: [1.0] for s in shards}, "seconds": seconds, "backends": backends}

    before = result(["q4", "f32-small"], 10, {"webgpu": {"real": {"q4": 1, "f32-small": 2}, "tiny": "old"}, "slow": {}})
    new = result(["f32-big"], 20, {"webgpu": {"real": {"f32-big": 3}, "tiny": "new"}, "slow": {"error": "no"}})
    merged = webgpu.merge(before, new)
    assert list(merged["native_ms_per_layer_token"]) == ["q4", "f32-small", "f32-big"]
    assert merged["backends"]["webgpu"] == {"real": {"q4": 1, "f32-small": 2, "f32-big": 3}, "tiny": "new"}
    assert merged["backends"]["slow"] == {}, "a backend that failed this time keeps what it had"
    assert merged["runs"] == [{"seconds": 10, "shards": ["q4", "f32-small"]}, {"seconds": 20, "shards": ["f32-big"]}]


def test_a_merged_run_keeps_the_newest_protocol_run() -> None:
    def result(backends: dict[str, object]) -> dict[str, object]:
        return {"native_ms_per_layer_token": {"q4": [1.0]}, "seconds": 1, "backends": backends}

    before = result({"webgpu": {"real": {}, "protocol": "old"}, "wasm": {"real": {}, "protocol": "old"}})
    new = result({"webgpu": {"real": {}, "protocol": "new"}, "wasm": {"real": {}}})
    merged = webgpu.merge(before, new)
    assert merged["backends"]["webgpu"]["protocol"] == "new"
    assert merged["backends"]["wasm"]["protocol"] == "old", "a run without the protocol keeps the earlier one's"
