"""The network seal of conftest.py works: these would leave the machine without it."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import NetworkSealError


def test_connecting_outside_loopback_fails_the_test() -> None:
    with pytest.raises(NetworkSealError, match="outside loopback"):
        socket.create_connection(("10.255.255.1", 80), timeout=0.1)


def test_name_lookups_other_than_localhost_are_refused() -> None:
    with pytest.raises(socket.gaierror, match="no DNS lookup"):
        socket.getaddrinfo("example.com", 80)
    assert socket.getaddrinfo("127.0.0.1", 80)


def test_loopback_still_works() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(server.getsockname(), timeout=1)
        client.close()
    finally:
        server.close()
