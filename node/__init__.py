"""The composition root: the ``cretoai-node`` command line, the supervisor of a node's
service processes, and ``cluster init``. It sits above ``services/`` (which it starts)
and ``cretoai/`` (the shared library); nothing below imports it."""
