"""`patchcache report`: what the cache saved, per class, from Squid's access logs."""
