"""zoneslice: an authoritative DNS testbed for zones too large for one server."""

__version__ = "0.1.0"
