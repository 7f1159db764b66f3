"""The small `example.` zone and TSIG secret the update tests share."""

from __future__ import annotations

import struct

import dns.name

EXAMPLE_ZONE = """$ORIGIN example.
$TTL 3600
@     SOA  ns1 hostmaster 100 3600 900 604800 300
@     NS   ns1
ns1   A    192.0.2.1
www   A    192.0.2.80
"""
SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="


def soa_rdata(serial: int) -> bytes:
    """SOA rdata of `example.` with ``serial`` (uncompressed wire)."""
    mname = dns.name.from_text("ns1.example.").to_wire()
    rname = dns.name.from_text("hostmaster.example.").to_wire()
    return mname + rname + struct.pack("!IIIII", serial, 3600, 900, 604800, 300)
