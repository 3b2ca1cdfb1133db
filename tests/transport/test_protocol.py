"""The provider protocol's JSON control messages: parsing, typed fields, and the hello a provider introduces itself
with. Everything refused is a ProtocolError carrying the error code the consumer sends back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from transport import protocol as p
from transport.protocol import ProtocolError

HELLO: dict[str, Any] = {
    "type": "hello",
    "protocol": 1,
    "name": "tab-1",
    "kind": "browser",
    "backend": "webgpu",
    "slots": 2,
    "memory_bytes": 4 << 30,
}


def test_dumps_writes_compact_json_with_the_type_first() -> None:
    text = p.dumps(p.HEARTBEAT, sessions=2, steps_served=40)
    assert text == '{"type":"heartbeat","sessions":2,"steps_served":40}'
    assert p.loads(text) == {"type": "heartbeat", "sessions": 2, "steps_served": 40}


def test_loads_accepts_any_object_with_a_string_type() -> None:
    assert p.loads('{"type": "anything", "x": [1]}') == {"type": "anything", "x": [1]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{nope", "not JSON", id="not-json"),
        pytest.param("", "not JSON", id="empty"),
        pytest.param("[1, 2]", "JSON object with a string", id="array"),
        pytest.param('"hello"', "JSON object with a string", id="string"),
        pytest.param("{}", "JSON object with a string", id="no-type"),
        pytest.param('{"type": 1}', "JSON object with a string", id="number-type"),
        pytest.param('{"type": null}', "JSON object with a string", id="null-type"),
    ],
)
def test_loads_refuses_what_is_not_a_control_message(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as caught:
        p.loads(text)
    assert caught.value.code == p.BAD_MESSAGE == "bad_message"
    assert caught.value.message == str(caught.value)


def test_field_returns_a_typed_value_within_bounds() -> None:
    message = {"type": "benchmark", "ns_per_layer_token": 5, "shard_id": "m:q4:1-2"}
    assert p.field(message, "ns_per_layer_token", int, low=1, high=10) == 5
    assert p.field(message, "ns_per_layer_token", int, low=5, high=5) == 5
    assert p.field(message, "shard_id", str) == "m:q4:1-2"


@pytest.mark.parametrize(
    ("value", "kind", "message"),
    [
        pytest.param(None, int, '"benchmark" needs "value" as int, got None', id="missing"),
        pytest.param("5", int, "as int, got '5'", id="string-for-int"),
        pytest.param(5.0, int, "as int, got 5.0", id="float-for-int"),
        pytest.param(True, int, "as int, got True", id="bool-for-int"),
        pytest.param(5, str, "as str, got 5", id="int-for-str"),
        pytest.param(0, int, '"value" must be between 1 and 10, got 0', id="below"),
        pytest.param(11, int, '"value" must be between 1 and 10, got 11', id="above"),
    ],
)
def test_field_refuses_a_wrong_type_or_an_out_of_range_number(value: Any, kind: type, message: str) -> None:
    fields = {"type": "benchmark"} if value is None else {"type": "benchmark", "value": value}
    with pytest.raises(ProtocolError, match=message) as caught:
        p.field(fields, "value", kind, low=1 if kind is int else None, high=10 if kind is int else None)
    assert caught.value.code == p.BAD_MESSAGE


def test_hello_fields_returns_the_capacity_to_store() -> None:
    assert p.hello_fields(HELLO) == {
        "name": "tab-1",
        "kind": "browser",
        "backend": "webgpu",
        "slots": 2,
        "memory_bytes": 4 << 30,
        "posted_ask": None,  # no ask in the hello: the platform's figure
    }
    assert p.hello_fields({**HELLO, "ask": 12})["posted_ask"] == 12


def test_hello_fields_shortens_a_long_name_and_names_an_empty_one() -> None:
    assert p.hello_fields({**HELLO, "name": "x" * 300})["name"] == "x" * 100
    assert p.hello_fields({**HELLO, "name": ""})["name"] == "provider"


@pytest.mark.parametrize("kind", p.KINDS)
@pytest.mark.parametrize("backend", p.BACKENDS)
def test_hello_fields_accepts_every_kind_and_backend(kind: str, backend: str) -> None:
    got = p.hello_fields({**HELLO, "kind": kind, "backend": backend})
    assert (got["kind"], got["backend"]) == (kind, backend)


@pytest.mark.parametrize("slots", [1, 64])
def test_hello_fields_accepts_the_slot_bounds(slots: int) -> None:
    assert p.hello_fields({**HELLO, "slots": slots})["slots"] == slots


@pytest.mark.parametrize("memory", [0, 2**40])
def test_hello_fields_accepts_the_memory_bounds(memory: int) -> None:
    assert p.hello_fields({**HELLO, "memory_bytes": memory})["memory_bytes"] == memory


def test_loads_refuses_deeply_nested_json_before_parsing_it() -> None:
    with pytest.raises(ProtocolError, match="nested deeper than 32 levels") as caught:
        p.loads('{"type": "hello", "name": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert caught.value.code == p.BAD_MESSAGE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"protocol": 2}, "protocol 2 is not spoken here", id="protocol-2"),
        pytest.param({"protocol": "1"}, "protocol '1' is not spoken here", id="protocol-string"),
        pytest.param({"protocol": None}, "protocol None is not spoken here", id="protocol-missing"),
        pytest.param({"kind": "phone"}, "kind must be one of", id="unknown-kind"),
        pytest.param({"backend": "cuda"}, "backend one of", id="unknown-backend"),
        pytest.param({"kind": 1}, '"kind" as str', id="kind-not-str"),
        pytest.param({"name": None}, '"name" as str', id="name-missing"),
        pytest.param({"slots": 0}, '"slots" must be between 1 and 64', id="no-slots"),
        pytest.param({"slots": 65}, '"slots" must be between 1 and 64', id="too-many-slots"),
        pytest.param({"slots": True}, '"slots" as int', id="slots-bool"),
        pytest.param({"slots": 2.0}, '"slots" as int', id="slots-float"),
        pytest.param({"memory_bytes": -1}, '"memory_bytes" must be between 0', id="negative-memory"),
        pytest.param({"memory_bytes": 10**15}, '"memory_bytes" must be between 0 and 1099511627776', id="1e15"),
        pytest.param({"memory_bytes": 2**40 + 1}, '"memory_bytes" must be between 0', id="over-1-tib"),
        pytest.param({"ask": 10**9 + 1}, '"ask" must be between 1 and 1000000000', id="huge-ask"),
        pytest.param({"memory_bytes": "lots"}, '"memory_bytes" as int', id="memory-not-int"),
    ],
)
def test_hello_fields_refuses_bad_capacity(change: dict[str, Any], message: str) -> None:
    hello = {key: value for key, value in {**HELLO, **change}.items() if value is not None}
    with pytest.raises(ProtocolError, match=message) as caught:
        p.hello_fields(hello)
    assert caught.value.code == p.BAD_MESSAGE


def test_a_protocol_error_keeps_a_specific_code() -> None:
    error = ProtocolError("session x is not yours", code=p.NOT_YOUR_SESSION)
    assert (error.code, error.message) == ("not_your_session", "session x is not yours")


def test_error_codes_and_close_codes_are_the_documented_ones() -> None:
    codes = [p.BAD_FRAME, p.BAD_MESSAGE, p.UNKNOWN_SESSION, p.NOT_YOUR_SESSION, p.UNEXPECTED_STEP, p.SHARD_FAILED]
    assert codes == [
        "bad_tensor_frame",
        "bad_message",
        "unknown_session",
        "not_your_session",
        "unexpected_step",
        "shard_failed",
    ]
    assert (p.CLOSE_PROTOCOL, p.CLOSE_UNAUTHORIZED, p.CLOSE_REPLACED) == (4400, 4401, 4409)
    assert json.loads(p.dumps(p.ERROR, code=p.STEP_FAILED, message="m")) == {
        "type": "error",
        "code": "step_failed",
        "message": "m",
    }


def test_a_challenge_goes_out_and_comes_back_as_the_same_challenge() -> None:
    from inference.challenge import Challenge

    sent = Challenge(seed=2**53 - 1, prompt=8, steps=32)
    message = p.loads(p.challenge_message(sent, shard_id="m:q4:10-20"))
    assert message["type"] == p.BENCHMARK_CHALLENGE and message["shard_id"] == "m:q4:10-20"
    assert (message["seed"], message["prompt"], message["steps"]) == (2**53 - 1, 8, 32)
    assert p.challenge_fields(message) == sent


@pytest.mark.parametrize(
    "change",
    [{"seed": 2**53}, {"seed": -1}, {"seed": 1.0}, {"prompt": 0}, {"prompt": 65}, {"steps": 257}, {"steps": True}],
    ids=["seed-too-big", "seed-negative", "seed-float", "no-prompt", "long-prompt", "many-steps", "bool-steps"],
)
def test_a_provider_takes_no_challenge_it_cannot_hold_or_that_asks_too_much(change: dict[str, Any]) -> None:
    message = {"type": "benchmark_challenge", "shard_id": "s", "seed": 5, "prompt": 8, "steps": 32, **change}
    with pytest.raises(ProtocolError):
        p.challenge_fields(message)
