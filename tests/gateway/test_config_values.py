"""gateway.config_values: single values (addresses, numbers, URLs) with the key in every error."""

from __future__ import annotations

import pytest

from gateway.config_model import ConfigError
from gateway.config_values import parse_address


def test_parse_address() -> None:
    assert parse_address("localhost:1", "k") == ("localhost", 1)
    assert parse_address("[::]:0", "k") == ("::", 0)
    with pytest.raises(ConfigError):
        parse_address("[::1]6432", "k")
