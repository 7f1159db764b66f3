"""The 13-server layout: inventory, the local namespace testbed, deployment, health checks."""

from zoneslice.testbed.layout import Layout, make_layout
from zoneslice.testbed.local import testbed_down, testbed_status, testbed_up

__all__ = ["Layout", "make_layout", "testbed_down", "testbed_status", "testbed_up"]
