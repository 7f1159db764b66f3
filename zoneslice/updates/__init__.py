"""Dynamic updates (RFC 2136 + TSIG): ddns semantics, key policy, the single writer, the engine hook."""
