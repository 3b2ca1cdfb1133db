"""How far an honest provider's numbers may sit from the referee's: one place, calibrated in docs/tolerance.md
(`bench/tolerance.py` measures the honest disagreement between backends these figures must stay above).

A check is per element, relative to the referee's value: |theirs − ours| ≤ atol + rtol · |ours|. Near the line the
verdict is "no fraud": only a value clearly outside counts. No Django here: the bench imports it too.
"""

from __future__ import annotations

import dataclasses

import numpy as np

VERSION = "2026-12-03"


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def excess(self, theirs: np.ndarray, ours: np.ndarray) -> float:
        """The largest |theirs − ours| / (atol + rtol·|ours|): at most 1 is inside the tolerance."""
        theirs = np.asarray(theirs, dtype=np.float32)
        ours = np.asarray(ours, dtype=np.float32)
        if theirs.shape != ours.shape:
            return float("inf")
        if not np.isfinite(theirs).all():
            return float("inf")
        return float((np.abs(theirs - ours) / (self.atol + self.rtol * np.abs(ours))).max(initial=0.0))


# Fitted by bench/tolerance.py (docs/tolerance.md): the largest honest disagreement seen between the referee (native
# ONNX Runtime, 1 thread) and native ORT on 2 and 4 threads, the tab's WASM and f32 kernels on q4 work, over 12
# prompts x 17 steps, times a margin of 8: an honest provider measured here sits at most at 1/8 of each.
# One layer re-executed from the provider's own revealed float32 input, against its revealed float32 output.
LAYER = Tolerance(rtol=8e-5, atol=3.8e-3)
# A hop's float16 output against the referee's float32 re-run of the hop from the recorded float16 input: the
# cast alone moves a value by up to 2^-11 of it (rtol), backends add their own.
HOP = Tolerance(rtol=4e-3, atol=3.1e-4)
# A head's answer: the logit of the token it returned may be below the referee's largest logit by at most this
# (a near-tie between two tokens is no fraud), and returned logits must match to LOGITS.
LOGIT_GAP = 8.3e-4
LOGITS = Tolerance(rtol=4e-6, atol=3e-4)


def describe() -> dict[str, object]:
    """The tolerance in force, recorded with every verdict."""
    return {
        "version": VERSION,
        "layer": dataclasses.asdict(LAYER),
        "hop": dataclasses.asdict(HOP),
        "logit_gap": LOGIT_GAP,
        "logits": dataclasses.asdict(LOGITS),
    }
