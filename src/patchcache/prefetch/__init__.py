"""The sidecar prefetcher: fills Squid's cache with whole objects, once each.

- `worker`: the asyncio loop (`Prefetcher`, `WorkerSettings`): leases jobs from the shared
  queue, fills through Squid, verifies digests, retries with backoff, parks, stops gracefully.
- `fetcher`: the `Fetcher` interface the worker fetches through, and `ProxyFetcher`, the real one.
- `fetch`: one fill (`Range: bytes=0-` through the proxy, hashed on the fly) and the size probe.
- `purge`: PURGE a bad object by its key URL and its original URL.
- `policy`: what may be fetched (never an open relay) and retry delays.
- `throttle`, `windows`: bandwidth (token buckets) and off-peak windows.
- `h11client`: one request and its response, the protocol done by h11 (no I/O).
- `cli`: `patchcache prefetch`, `patchcache status`, `patchcache channel add`.
"""
