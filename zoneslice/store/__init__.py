"""Slice databases: SQLite files holding one slice of a zone each."""
