"""Shared fixtures. Every test runs sealed from the network: a connection or a name lookup
for anything outside loopback fails the test instead of leaving the machine."""

from __future__ import annotations

import ipaddress
import socket

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


class NetworkSealError(AssertionError):
    pass


def _check_address(address: object) -> None:
    if isinstance(address, tuple) and address:
        host = str(address[0]).split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise NetworkSealError(f"test tried to connect to a host name: {host}") from None
        if not ip.is_loopback:
            raise NetworkSealError(f"test tried to connect outside loopback: {host}")


def _sealed_connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check_address(address)
    return _real_connect(self, address)


def _sealed_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check_address(address)
    return _real_connect_ex(self, address)


def _sealed_getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in (None, "localhost"):
        try:
            ipaddress.ip_address(str(name).split("%", 1)[0])
        except ValueError:
            raise socket.gaierror(
                socket.EAI_NONAME, f"sealed test: no DNS lookup for {name}"
            ) from None
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True)
def sealed_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _sealed_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _sealed_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", _sealed_getaddrinfo)


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for the whole test run (start-up costs 5-9 s)."""
    from pipeline.spark.session import get_session

    session = get_session("wit-builder-tests", master="local[2]")
    yield session
    session.stop()
