import socket
import subprocess
import sys

import pytest


def test_guard_refuses_outside_addresses_in_this_process():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(RuntimeError, match="offline guard"):
        s.connect(("192.0.2.1", 443))
    s.close()
    with pytest.raises(RuntimeError, match="offline guard"):
        socket.getaddrinfo("example.org", 443)


def test_guard_applies_to_subprocesses():
    code = "import socket; socket.create_connection(('192.0.2.1', 443), timeout=1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "offline guard" in proc.stderr


def test_guard_allows_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket()
    client.connect(server.getsockname())
    client.close()
    server.close()
