"""Free TCP ports on the loopback interface (local clusters, test stand-ins).

    python -c "from pipeline.core.ports import free_ports; print(free_ports(2))"
"""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct TCP ports on 127.0.0.1 that are free right now.

    All sockets stay open until every port is chosen, so the ports differ; another process
    could still take one before a worker binds it (rare on loopback).
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
