"""The Borglet: runs the cell's tasks on one machine.

gRPC's fork handlers are turned off before grpc is first imported: the Borglet forks (exec
health checks as another user) while gRPC threads run, and the handlers only log a warning
for each such fork; every child here execs at once, which is safe without them.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
