"""Captures: read them (pcap), describe them (characterize), route them by slice
(partition) and send them to the slice servers (replay).

This package reaches servers over the network only; it never imports the engine.
"""
