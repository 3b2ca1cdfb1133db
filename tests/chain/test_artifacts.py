"""The committed contract artifacts are what `node contracts/build.mjs` builds from contracts/src today: a change to
a contract that was not rebuilt (or a hand-edited artifact) fails here instead of deploying stale bytecode."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "contracts" / "artifacts"
REBUILD = "run `node contracts/build.mjs` and commit contracts/artifacts"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    build = subprocess.run(
        ["node", "contracts/build.mjs", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert build.returncode == 0, f"contracts/build.mjs failed:\n{build.stderr}"
    return out


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.json")}


def test_the_build_writes_exactly_the_committed_artifacts(rebuilt: Path) -> None:
    assert {"MarketToken.json", "MarketVault.json", "Staking.json", "SettlementAnchor.json"} <= names(rebuilt)
    missing, extra = names(rebuilt) - names(COMMITTED), names(COMMITTED) - names(rebuilt)
    assert not missing and not extra, (
        f"not committed: {sorted(missing)}; not built any more: {sorted(extra)}; {REBUILD}"
    )


@pytest.mark.parametrize("name", sorted(names(COMMITTED)))
def test_a_committed_artifact_equals_the_rebuilt_one(rebuilt: Path, name: str) -> None:
    fresh = rebuilt / name
    assert fresh.is_file(), f"contracts/artifacts/{name} is no longer built: {REBUILD}"
    assert (COMMITTED / name).read_text() == fresh.read_text(), f"contracts/artifacts/{name} is stale: {REBUILD}"
