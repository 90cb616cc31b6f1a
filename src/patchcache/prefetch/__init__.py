"""The sidecar prefetcher: fills Squid's cache with whole objects, once each."""
