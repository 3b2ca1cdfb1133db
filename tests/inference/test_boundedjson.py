"""JSON from strangers: its nesting is measured before it is parsed, so depth can never crash the process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inference import boundedjson


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ('"[[[["', 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["]]]]", [["\\"[", "\\\\"]]]', 3),
        ("[[]] [[[]]]", 3),
        ('[["unterminated [[', 4),  # malformed: may read deeper than it is, never shallower
        ("[" * 1000, 1000),
    ],
)
def test_nesting_counts_arrays_and_objects_outside_strings(text: str, depth: int) -> None:
    assert boundedjson.nesting(text) == depth
    assert boundedjson.nesting(text.encode()) == depth


def test_loads_refuses_deep_json_and_parses_the_rest() -> None:
    assert boundedjson.loads('{"a": [[1]]}', max_depth=3) == {"a": [[1]]}
    with pytest.raises(boundedjson.TooDeep, match="deeper than 2 levels"):
        boundedjson.loads('{"a": [[1]]}', max_depth=2)
    with pytest.raises(ValueError, match="NaN"):
        boundedjson.loads("[NaN]")


def test_deep_json_cannot_crash_a_process_whose_recursion_limit_was_raised() -> None:
    """py_ecc (under web3) sets the recursion limit to 100,000 on import; json.loads of JSON that deep then
    overflows the C stack. In a child process, so that a crash is a failure, not the end of the test run."""
    probe = (
        "import sys, py_ecc; from inference import boundedjson\n"
        "assert sys.getrecursionlimit() >= 100_000\n"
        "try:\n"
        "    boundedjson.loads('[' * 100_000 + ']' * 100_000)\n"
        "except boundedjson.TooDeep as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: JSON nested deeper than 32 levels" in done.stdout


def test_measuring_megabytes_is_cheap() -> None:
    text = json.dumps([{"role": "user", "content": "[{" * 500_000}] * 2)
    assert boundedjson.nesting(text) == 2
