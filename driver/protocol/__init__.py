"""The sans-I/O PostgreSQL v3 protocol core shared by the driver and the gateway."""

from .framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    UNTYPED,
    FrontendReader,
    MessageReader,
    MessageTooLarge,
    ProtocolError,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "UNTYPED",
    "FrontendReader",
    "MessageReader",
    "MessageTooLarge",
    "ProtocolError",
]
