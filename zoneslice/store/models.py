"""Tables of a slice database.

``rr`` holds one row per resource record, keyed so that the engine's lookups
are index range scans: exact node (``rkey``), node plus descendants
(``rkey`` prefix range, for empty non-terminals and wildcards), closest encloser
(walk the ancestors' keys) and canonical predecessor of a given type
(``ix_rr_type``: ``rdtype, rkey`` descending, for NSEC and NSEC3 denial).
``rdata`` is the record's uncompressed wire form, ready to be appended to a
message; names inside it keep the case of the master file.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, LargeBinary, MetaData, Table, Text

SCHEMA_VERSION = 1

# rr.origin values: why a row is in this slice.
OWNED = 1  # owner is in the slice's range (or is the apex)
COPY_GLUE = 2  # A/AAAA (+RRSIGs) of NS/MX/SRV targets owned by another slice, and the NS of cuts above them
COPY_NSEC = 3  # the NSEC (and its RRSIG) covering names just before the slice's range
COPY_NSEC3 = 4  # the zone's NSEC3 chain (and RRSIGs), carried whole by every slice
COPY_TARGET = 5  # subtree of an in-zone CNAME/DNAME target owned by another slice; the apex wildcard

metadata = MetaData()

rr = Table(
    "rr",
    metadata,
    Column("rkey", LargeBinary, primary_key=True),
    Column("rdtype", Integer, primary_key=True),
    Column("covers", Integer, primary_key=True),
    Column("rdata", LargeBinary, primary_key=True),
    Column("ttl", Integer, nullable=False),
    Column("origin", Integer, nullable=False),
    sqlite_with_rowid=False,
)
Index("ix_rr_type", rr.c.rdtype, rr.c.rkey)

meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

# One row per applied UPDATE (or group of them): the IXFR changeset from
# ``serial_from`` to ``serial_to``. ``soa_from``/``soa_to`` are SOA rdata;
# ``deleted``/``added`` are concatenated uncompressed RRs (owner, type, class,
# TTL, rdlength, rdata) in the order IXFR sends them. ``seq`` orders the rows
# whatever the serials do across a wrap (RFC 1982).
journal = Table(
    "journal",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("serial_from", Integer, nullable=False),
    Column("serial_to", Integer, nullable=False),
    Column("soa_from", LargeBinary, nullable=False),
    Column("soa_to", LargeBinary, nullable=False),
    Column("deleted", LargeBinary, nullable=False),
    Column("added", LargeBinary, nullable=False),
    Column("stamp", Integer, nullable=False),
)
Index("ix_journal_from", journal.c.serial_from)
