"""gateway.config_display: the effective settings as data and TOML, secrets masked."""

from __future__ import annotations

import tomllib

from gateway.config import config_to_display, display_to_toml, parse_config
from tests.gateway.test_config import VERIFIER, base


def test_display_masks_secrets_and_roundtrips() -> None:
    d = base()
    d["users"]["bob"] = {"password": VERIFIER, "tokens": ["tok-secret"]}
    cfg = parse_config(d)
    disp = config_to_display(cfg)
    text = display_to_toml(disp)
    for secret in ("app-secret", "alice-secret", "tok-secret", VERIFIER[:20]):
        assert secret not in text
        assert secret not in repr(cfg)
    assert disp["databases"]["app"]["password"] == "***"
    assert disp["users"]["bob"]["tokens"] == ["***"]
    again = tomllib.loads(text)
    assert again["gateway"]["default_pool_size"] == 20
    assert again["databases"]["app"]["pool_size"] == 20
