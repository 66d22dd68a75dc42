"""The development kit that tests and benchmarks share (neither imports the other).

- :mod:`devkit.ports` — free loopback ports for services under test.
- :mod:`devkit.transport` — real transport services on loopback (keys, configs,
  in-process services and service processes, stubs).

It may import everything below it (``cretoai``, ``services``, ``node``); nothing in
``cretoai``, ``services`` or ``node`` imports it.
"""
