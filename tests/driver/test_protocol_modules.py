"""The protocol core's module layout: messages.py re-exports the server's side
(backend encoders, frontend messages) lazily, client.py re-exports its events
and requests, and the small dataclass stand-in compiles ``__init__`` at the
first instance."""

from __future__ import annotations

import pytest

from driver.protocol import _dataclass, backend_encoders, client, events, frontend_messages
from driver.protocol import messages as m
from driver.protocol import requests


@pytest.mark.parametrize("module", [backend_encoders, frontend_messages])
def test_messages_reexports_the_server_side(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert names
    for name in names:
        assert getattr(m, name) is getattr(module, name), name
    with pytest.raises(AttributeError):
        m.no_such_message  # noqa: B018
    from driver.protocol.messages import Parse, decode_frontend, error_response
    assert (Parse, decode_frontend, error_response) == (
        frontend_messages.Parse, frontend_messages.decode_frontend, backend_encoders.error_response)


@pytest.mark.parametrize("module", [events, requests])
def test_client_reexports_events_and_requests(module: object) -> None:
    for name in module.__all__:  # type: ignore[attr-defined]
        assert getattr(client, name) is getattr(module, name), name
        assert name in client.__all__


def test_encoded_and_decoded_round_trip() -> None:
    data = m.bind("p", "s", [1], [b"\x00\x00\x00\x07", None], [1])
    assert data[:1] == b"B"
    msg = m.decode_frontend(data[0], data[5:])
    assert msg == m.Bind("p", "s", (1,), (b"\x00\x00\x00\x07", None), (1,))
    err = m.error("22012", "division by zero", detail="d")
    decoded = m.decode_backend(err[0], err[5:])
    assert isinstance(decoded, m.ErrorResponse)
    assert (decoded.sqlstate, decoded.message, decoded.fields["D"]) == ("22012", "division by zero", "d")
    assert m.decode_frontend(m.F.SYNC, b"") is m.decode_frontend(m.F.SYNC, b"")


def test_dataclass_init_compiled_at_first_instance() -> None:
    @_dataclass.dataclass(frozen=True, slots=True)
    class Base:
        a: int
        b: list[int] = _dataclass.field(default_factory=list)

    @_dataclass.dataclass(frozen=True, slots=True)
    class Child(Base):
        c: str = "x"

    class Plain(Child):  # not decorated: uses Child's __init__
        pass

    placeholder = Base.__init__
    p = Plain(1, [2], "y")  # first instance of the hierarchy: a subclass's
    assert (p.a, p.b, p.c) == (1, [2], "y")
    assert Child.__init__ is not Base.__init__
    assert Base.__init__ is placeholder  # not instantiated yet
    b1, b2 = Base(1), Base(1)
    assert Base.__init__ is not placeholder
    assert b1 == b2 and b1.b is not b2.b  # a fresh default_factory value each
    assert repr(b1) == "Base(a=1, b=[])"
    assert Child(1) == Child(1, [], "x") != Child(1, [], "z")
    with pytest.raises(_dataclass.FrozenInstanceError):
        b1.a = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Base()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Child(1, [], "x", 4)  # type: ignore[call-arg]
    assert not hasattr(b1, "__dict__")
