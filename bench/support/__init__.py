"""Processes the benchmarks start: a fixed-response upstream, native peer proxies (HAProxy,
nginx) and their configs, CPU pinning and accounting. Loopback only; every process started
here is stopped by its own pid."""
