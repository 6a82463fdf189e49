from __future__ import annotations

import pytest

from pipeline.fetch.guard import AddressGuard


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.255.255.1", "private"),
        ("172.16.0.5", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata endpoint
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped IPv6 is checked as the IPv4 it maps
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str, kind: str) -> None:
    refusal = AddressGuard.from_cidrs([]).refusal(address)
    assert refusal is not None
    assert kind in refusal
    assert "--allow-networks" in refusal


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert AddressGuard.from_cidrs([]).refusal(address) is None


def test_allow_networks_admits_only_its_range() -> None:
    guard = AddressGuard.from_cidrs(["127.0.0.0/8"])
    assert guard.refusal("127.0.0.1") is None
    assert guard.refusal("127.3.2.1") is None
    assert guard.refusal("10.0.0.1") is not None
    assert guard.refusal("::1") is not None  # an IPv4 range does not admit IPv6 loopback


def test_garbage_is_refused() -> None:
    assert "not an IP" in AddressGuard.from_cidrs([]).refusal("not-an-ip")
