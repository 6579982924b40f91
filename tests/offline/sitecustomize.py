"""Loaded by every Python process the tests start (PYTHONPATH): refuse network access.

Loopback and Unix sockets stay allowed (the test SLURM cluster talks over localhost);
anything else raises at once, so a step that tries to download fails loudly in the test
instead of hanging or silently depending on the internet.
"""

import ipaddress
import os
import socket

if os.environ.get("GPUBIO_OFFLINE_GUARD") == "1":

    class NetworkAccessError(RuntimeError):
        pass

    def _allowed(address) -> bool:
        if not isinstance(address, tuple):  # AF_UNIX path
            return True
        host = address[0]
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False  # a host name: resolving it is already network access

    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex
    _getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if not _allowed(address):
            raise NetworkAccessError(f"network access to {address!r} attempted during tests (offline guard)")
        return _connect(self, address)

    def connect_ex(self, address):
        if not _allowed(address):
            raise NetworkAccessError(f"network access to {address!r} attempted during tests (offline guard)")
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost") and not _allowed((host, 0)):
            raise NetworkAccessError(f"name lookup of {host!r} attempted during tests (offline guard)")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
