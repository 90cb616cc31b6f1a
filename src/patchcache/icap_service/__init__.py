"""The ICAP (RFC 3507) service: per-class object size limits and first sight of ranged downloads."""
