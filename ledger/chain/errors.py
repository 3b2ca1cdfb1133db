"""The chain's errors, and the one place that turns every web3 / provider exception into them.

web3.py raises different exceptions for one revert depending on where it surfaced (gas estimation, eth_call, a
mined receipt) and on the node; custom Solidity errors arrive as raw selector data. `chain_errors()` maps them all
onto this hierarchy (subclasses of the project's MarketError, so the API answers them like any other error).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import requests
from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector
from web3 import exceptions as w3x

from config.errors import MarketError


class ChainError(MarketError):
    code = "chain_error"
    status = 502


class ChainUnavailable(ChainError):
    """The node did not answer (down, refused, timed out). Retry later; nothing was decided."""

    code = "chain_unavailable"
    status = 503


class ChainReverted(ChainError):
    """The contract refused the call: `error_name` is the Solidity error (e.g. UnbondingNotOver), `error_args` its
    decoded arguments."""

    code = "chain_reverted"
    status = 409

    def __init__(self, message: str, *, error_name: str = "", error_args: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args


class NonceTooLow(ChainError):
    """The node has already seen a transaction with this nonce from this sender."""

    code = "chain_nonce_too_low"


class AlreadyKnown(ChainError):
    """This exact signed transaction is already in the node's pool or chain."""

    code = "chain_already_known"


# Custom error selectors (4 bytes) -> (name, argument types), filled from the artifacts' ABIs on first use.
_ERRORS: dict[bytes, tuple[str, list[str]]] = {}


def register_abi(abi: list[dict[str, Any]]) -> None:
    for item in abi:
        if item.get("type") == "error":
            types = [i["type"] for i in item.get("inputs", [])]
            selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
            _ERRORS[selector] = (item["name"], types)


def decode_revert(data: str | bytes | None) -> ChainReverted:
    """A ChainReverted from revert data: a custom error of our contracts or OpenZeppelin's, Error(string), Panic."""
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else (data or b"")
    selector, body = raw[:4], raw[4:]
    if selector in _ERRORS:
        name, types = _ERRORS[selector]
        try:
            args = tuple(abi_decode(types, body))
        except Exception:  # malformed arguments: keep the name
            args = ()
        shown = ", ".join(a.hex() if isinstance(a, bytes) else str(a) for a in args)
        return ChainReverted(f"the contract refused: {name}({shown})", error_name=name, error_args=args)
    return ChainReverted(f"the contract refused (revert data {raw.hex() or 'empty'})")


def _from_rpc_error(exc: w3x.Web3RPCError) -> ChainError:
    text = str(exc).lower()
    if "nonce too low" in text or "nonce is too low" in text:
        return NonceTooLow(str(exc))
    if "already known" in text or "already imported" in text:
        return AlreadyKnown(str(exc))
    return ChainError(f"the node refused: {exc}")


@contextlib.contextmanager
def chain_errors() -> Iterator[None]:
    """Run chain calls inside this: any exception of web3, eth_account's node or the transport comes out as a
    ChainError subclass (the original chained as its cause)."""
    try:
        yield
    except ChainError:
        raise
    except w3x.ContractCustomError as exc:
        raise decode_revert(exc.data if isinstance(exc.data, str | bytes) else str(exc.args[-1])) from exc
    except w3x.ContractPanicError as exc:
        raise ChainReverted(f"the contract panicked: {exc.message}", error_name="Panic") from exc
    except w3x.ContractLogicError as exc:
        data = exc.data if isinstance(exc.data, str | bytes) else None
        if data and len(data) >= 10 and not str(data).startswith("0x08c379a0"):
            raise decode_revert(data) from exc
        raise ChainReverted(f"the contract refused: {exc.message}", error_name="Error") from exc
    except w3x.Web3RPCError as exc:
        raise _from_rpc_error(exc) from exc
    except (requests.ConnectionError, requests.Timeout, w3x.ProviderConnectionError, w3x.TimeExhausted) as exc:
        raise ChainUnavailable(f"the chain node did not answer: {type(exc).__name__}") from exc
    except ConnectionError as exc:
        raise ChainUnavailable(f"the chain node did not answer: {exc}") from exc
