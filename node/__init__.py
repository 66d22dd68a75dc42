"""The composition root: the ``cretoai-node`` command line, the supervisor of a node's
service processes, and ``cluster init``. It sits above ``services/`` (which it starts)
and ``cretoai/`` (the shared library); nothing below imports it."""

import os

# gRPC's C core reads its log level once, when grpc is first imported: set here, before
# anything of the command line imports it. It wrote a line per failed TLS handshake of
# the supervisor's health checks straight to the operator's terminal (hundreds, for one
# node with a wrong address: an audit, 2026-12-04); what the commands need they get as
# Python errors. An operator's GRPC_VERBOSITY wins, and reaches the services too.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
