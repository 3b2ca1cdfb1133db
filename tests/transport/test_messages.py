"""The typed events between runners and provider consumers: what travels is plain data, and reads back the same."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]  # ships no type hints
import pytest

from transport import messages as m

FORWARD = m.Forward(channel="c!1", session="s-2", hop=0, next_token=True, stop_ids=(2, 7), last_step=9)
EXAMPLES = [
    m.ProviderOpen(session="s-1", hop=2, shard={"id": "x:q4:20-30", "has_head": True}, reply_to="r!1", forward=FORWARD),
    m.ProviderOpen(session="s-1", hop=1, shard={"id": "x:q4:10-20"}, reply_to="r!1", head_output="argmax"),
    m.ProviderRoute(session="s-1", forward=m.Forward(channel="c!2", session="s-3", hop=1)),
    m.ProviderRoute(session="s-1", forward=None),
    m.ProviderStep(session="s-1", step=4, tokens=1, frame=b"\x00\x01", forward=True),
    m.ProviderClose(session="s-1"),
    m.ProviderReveal(request="ab", session="s-1", layer=3, first_step=0, last_step=5),
    m.RunnerLaunch(job=12),
    m.RunnerOpened(session="s-1", load_ms=3.5),
    m.RunnerOutput(session="s-1", step=4, frame=b"\x02", relayed="now"),
    m.RunnerError(session="s-1", code="step_failed", message="out of memory"),
    m.RunnerLost(session="s-1", provider=5),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda message: message.TYPE)
def test_a_message_travels_as_plain_data_and_reads_back_the_same(message: m.Message) -> None:
    event = message.event()
    assert event["type"] == message.TYPE
    # The Redis channel layer packs events with msgpack: only plain values survive it.
    unpacked = msgpack.unpackb(msgpack.packb(event, use_bin_type=True), raw=False)
    assert m.parse(unpacked) == message


def test_every_type_is_registered_once_under_its_name() -> None:
    assert set(m.MESSAGES) == {message.TYPE for message in EXAMPLES}
    assert all(name.split(".")[0] in ("provider", "runner") for name in m.MESSAGES)


def test_an_event_missing_a_field_or_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(KeyError, match="code"):
        m.parse({"type": "runner.error", "session": "s-1", "message": "no code"})
    with pytest.raises(KeyError):
        m.parse({"type": "provider.teleport", "session": "s-1"})
    # Defaults fill what may be left out.
    assert m.parse({"type": "runner.opened", "session": "s-1"}) == m.RunnerOpened(session="s-1", load_ms=None)


@pytest.mark.parametrize(
    ("token", "step", "ending"),
    [(2, 0, "stop"), (7, 9, "stop"), (5, 9, "length"), (5, 8, None), (5, 0, None)],
)
def test_one_rule_says_where_a_greedy_job_ends(token: int, step: int, ending: str | None) -> None:
    assert m.job_ends(token, step, stop_ids=FORWARD.stop_ids, last_step=FORWARD.last_step) == ending
    # The head's consumer sends the token on to hop 0 exactly when the runner would go on.
    assert FORWARD.carries_on(token, step) is (ending is None)


def test_logits_never_go_on_without_the_runner() -> None:
    assert not FORWARD.carries_on(None, 0)  # a sampled job's head: the runner samples
