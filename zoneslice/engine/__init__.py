"""The authoritative engine: a slice answers exactly as NSD answers the whole zone.

:class:`~zoneslice.engine.query.Responder` turns a query message into a
response message; ``engine.server`` puts it on sockets.
"""

from zoneslice.engine.query import Responder

__all__ = ["Responder"]
