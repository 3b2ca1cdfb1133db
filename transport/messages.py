"""The typed events between a job's runner and the provider consumers (channel layer or in-process relay).

`provider.*` events go to a provider's consumer, which speaks the provider protocol (transport/protocol.py) on its
socket; `runner.*` events go to a job's runner (market/orchestrator.py), or, for `runner.launch`, to the consumer
of the job's first provider, which starts the runner next to itself. Each is a frozen dataclass: `event()` is the
dict that travels (the channel layer carries plain values: msgpack on Redis), `parse(event)` reads one back, and a
consumer's handler is named after the type as Channels dispatches it ("provider.step" -> `provider_step`).

`Forward` says where a hop's outputs go next, and `job_ends` is the one rule for when a greedy job's head token
goes no further: the runner (which ends the job) and a head's consumer (which sends the token on to hop 0 without
a turn through the runner) both apply it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any, ClassVar, Literal

from transport.protocol import HEAD_LOGITS

Ending = Literal["stop", "length"]


def job_ends(token: int, step: int, *, stop_ids: Collection[int], last_step: int) -> Ending | None:
    """Why a job ends at the head's `token` of `step`: a stop token ("stop"), or the last step answered ("length");
    None when it goes on with `step + 1`."""
    if token in stop_ids:
        return "stop"
    if step + 1 > last_step:
        return "length"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Forward:
    """Where a hop's outputs go next: the next hop's consumer and session. For a greedy job's head (`next_token`),
    hop 0's, as the input of the next step, unless `job_ends` says the job ends there."""

    channel: str
    session: str
    hop: int
    next_token: bool = False
    stop_ids: tuple[int, ...] = ()
    last_step: int = 0

    def as_dict(self) -> dict[str, Any]:
        address: dict[str, Any] = {"channel": self.channel, "session": self.session, "hop": self.hop}
        if self.next_token:
            address |= {"next_token": True, "stop_ids": list(self.stop_ids), "last_step": self.last_step}
        return address

    @classmethod
    def of(cls, address: dict[str, Any] | None) -> Forward | None:
        if address is None:
            return None
        return cls(
            channel=address["channel"],
            session=address["session"],
            hop=int(address["hop"]),
            next_token=bool(address.get("next_token", False)),
            stop_ids=tuple(address.get("stop_ids", ())),
            last_step=int(address.get("last_step", 0)),
        )

    def carries_on(self, token: int | None, step: int) -> bool:
        """Whether a head's output of `step` goes on to hop 0 as the next step's input: only a token (an argmax;
        logits are sampled by the runner), and only when the job does not end at it."""
        return token is not None and job_ends(token, step, stop_ids=self.stop_ids, last_step=self.last_step) is None


class Message:
    """A typed event; subclasses are frozen dataclasses with a TYPE."""

    TYPE: ClassVar[str]
    _FIELDS: ClassVar[tuple[str, ...]] = ()  # set by `_register`: the fields, in order
    _REQUIRED: ClassVar[frozenset[str]] = frozenset()  # those without a default
    _ADDRESS: ClassVar[str | None] = None  # the field holding a Forward, if any

    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = {"type": self.TYPE}
        for name in self._FIELDS:
            value = getattr(self, name)
            event[name] = value.as_dict() if isinstance(value, Forward) else value
        return event

    @classmethod
    def of(cls, event: dict[str, Any]) -> Any:
        """The message an event holds (KeyError when a field without a default is missing)."""
        if missing := cls._REQUIRED - event.keys():
            raise KeyError(f"{cls.TYPE} needs {sorted(missing)}")
        values = {name: event[name] for name in cls._FIELDS if name in event}
        if cls._ADDRESS in values:
            values[cls._ADDRESS] = Forward.of(values[cls._ADDRESS])
        return cls(**values)


def parse(event: dict[str, Any]) -> Message:
    """The typed message of a received event; KeyError for an unknown type or a missing field."""
    message: Message = MESSAGES[event["type"]].of(event)
    return message


# --- runner -> provider consumer --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderOpen(Message):
    """Open a session of `shard` (its descriptor) for hop `hop`; answers go to `reply_to`, outputs to `forward`."""

    TYPE: ClassVar[str] = "provider.open"
    session: str
    hop: int
    shard: dict[str, Any]
    reply_to: str
    forward: Forward | None = None
    head_output: str = HEAD_LOGITS  # a head's logits, or their argmax for a greedy job


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderRoute(Message):
    """Send the session's outputs to another next hop (it was replaced)."""

    TYPE: ClassVar[str] = "provider.route"
    session: str
    forward: Forward | None


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderStep(Message):
    """A step input for the provider (a tensor frame of `tokens` positions); `forward`: its output goes on to the
    next hop (False for a replayed step, whose output goes back to the runner only)."""

    TYPE: ClassVar[str] = "provider.step"
    session: str
    step: int
    tokens: int
    frame: bytes
    forward: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderClose(Message):
    TYPE: ClassVar[str] = "provider.close"
    session: str


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderReveal(Message):
    """A referee asks the provider to open one layer's committed states for steps first_step..last_step."""

    TYPE: ClassVar[str] = "provider.reveal"
    request: str
    session: str
    layer: int
    first_step: int
    last_step: int


# --- provider consumer -> runner --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RunnerLaunch(Message):
    """To the consumer of a placed job's first provider: run the job's runner in this process."""

    TYPE: ClassVar[str] = "runner.launch"
    job: int


@dataclasses.dataclass(frozen=True, slots=True)
class RunnerOpened(Message):
    TYPE: ClassVar[str] = "runner.opened"
    session: str
    load_ms: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RunnerOutput(Message):
    """A hop's output (a tensor frame), and how it went on: "now" (on the next provider's socket at once),
    "queued", "layer" (through the channel layer), or None (nowhere)."""

    TYPE: ClassVar[str] = "runner.output"
    session: str
    step: int
    frame: bytes
    relayed: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RunnerError(Message):
    TYPE: ClassVar[str] = "runner.error"
    session: str
    code: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class RunnerLost(Message):
    """The provider of the session disconnected."""

    TYPE: ClassVar[str] = "runner.lost"
    session: str
    provider: int


def _register(*classes: type[Message]) -> dict[str, type[Message]]:
    """The message classes by type, each with its field lists read once (`event` and `of` run on every step)."""
    for cls in classes:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # every message class is a dataclass
        cls._FIELDS = tuple(f.name for f in fields)
        cls._REQUIRED = frozenset(f.name for f in fields if f.default is dataclasses.MISSING)
        # Annotations are strings here (postponed evaluation): a Forward field is named by its type.
        cls._ADDRESS = next((f.name for f in fields if str(f.type).startswith("Forward")), None)
    return {cls.TYPE: cls for cls in classes}


MESSAGES = _register(
    ProviderOpen,
    ProviderRoute,
    ProviderStep,
    ProviderClose,
    ProviderReveal,
    RunnerLaunch,
    RunnerOpened,
    RunnerOutput,
    RunnerError,
    RunnerLost,
)
