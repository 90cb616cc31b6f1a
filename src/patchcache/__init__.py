"""patchcache: make software updates cross the WAN once, with Squid doing the caching."""

__version__ = "0.1.0"
