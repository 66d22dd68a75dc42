"""The development kit that tests and benchmarks share (neither imports the other).

- :mod:`devkit.ports` — free loopback ports for services under test.
- :mod:`devkit.transport` — real transport services on loopback (keys, configs,
  in-process services and service processes, stubs).
- :mod:`devkit.storage` — a storage service's config (with a test validator set),
  CommitBatch requests as consensus sends them (real certificates), and the
  service as a process.
- :mod:`devkit.prometheus` — ``promtool check metrics``, a scrape config from
  ``cluster.json`` and a real Prometheus server on a loopback port.

It may import everything below it (``cretoai``, ``services``, ``node``); nothing in
``cretoai``, ``services`` or ``node`` imports it, and it imports neither tests nor
benchmarks (``tests/test_layering.py``).
"""
