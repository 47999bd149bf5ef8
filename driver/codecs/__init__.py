"""PostgreSQL type codecs of the Wirepool driver (standard library only).

Python types and edge values follow asyncpg's defaults.  Module-level functions use
the process-wide default :class:`TypeRegistry`; a connection may create its own
``TypeRegistry()`` to add codecs for non-builtin OIDs.

- ``encoder_for(oid) -> (format, encode)``: binary (1) for known types, text (0,
  ``str(value)`` UTF-8) for unknown OIDs / OID 0.
- ``decoder_for(oid, fmt) -> decode``: unknown OIDs decode text to ``str`` (binary to bytes).
- ``result_format_for(oid) -> 0 | 1`` for Bind result-format codes.
- ``build_row_decoder([(oid, fmt), ...]) -> f(datarow_body) -> tuple``.
- ``encode_params(param_oids, args) -> (formats, values)``; raises :class:`EncodeError`
  whose message is ``invalid input for query argument $N: <value> (<reason>)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import oids
from ._core import FORMAT_BINARY, FORMAT_TEXT, Decoder, EncodeError, Encoder, TypeInfo
from ._registry import DEFAULT_REGISTRY, RowDecoder, TypeRegistry

__all__ = [
    "TypeInfo", "oids", "encoder_for", "decoder_for", "result_format_for", "build_row_decoder",
    "encode_params", "register_type", "TypeRegistry", "EncodeError", "DEFAULT_REGISTRY",
    "FORMAT_TEXT", "FORMAT_BINARY", "Encoder", "Decoder", "RowDecoder",
]


def encoder_for(oid: int) -> tuple[int, Encoder]:
    return DEFAULT_REGISTRY.encoder_for(oid)


def decoder_for(oid: int, fmt: int) -> Decoder:
    return DEFAULT_REGISTRY.decoder_for(oid, fmt)


def result_format_for(oid: int) -> int:
    return DEFAULT_REGISTRY.result_format_for(oid)


def build_row_decoder(columns: Sequence[tuple[int, int]]) -> RowDecoder:
    return DEFAULT_REGISTRY.build_row_decoder(columns)


def encode_params(param_oids: Sequence[int],
                  args: Sequence[Any]) -> tuple[list[int], list[bytes | None]]:
    return DEFAULT_REGISTRY.encode_params(param_oids, args)


def register_type(info: TypeInfo, registry: TypeRegistry | None = None) -> None:
    """Register ``info`` in ``registry`` (default: the process-wide default registry)."""
    (registry if registry is not None else DEFAULT_REGISTRY).register(info)
