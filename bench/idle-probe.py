#!/usr/bin/env python3
"""Server memory per idle WebSocket connection, plain or TLS (load-test speaks ws:// only).

usage: bench/idle-probe.py PORT SERVER_PID N plain|tls

Opens 100 warm-up connections, then N more (each: optional TLS handshake, the
HTTP upgrade, 101 read), and prints the server's resident-memory growth per
connection (VmRSS from /proc). Certificates are not verified (a test cert).
Example:
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem \
      -out cert.pem -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1
  broadcast-server start --host 127.0.0.1 --port 9443 --tls-cert cert.pem --tls-key key.pem &
  bench/idle-probe.py 9443 $! 3000 tls
"""
import base64
import os
import socket
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def main():
    port, pid, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def connect():
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if mode == "tls":
            s = ctx.wrap_socket(s)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("connection closed during the upgrade")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise SystemExit(f"upgrade refused: {head[:80]!r}")
        return s

    warm = [connect() for _ in range(100)]
    time.sleep(1)
    before = rss_kib(pid)
    held = [connect() for _ in range(n)]
    time.sleep(2)
    after = rss_kib(pid)
    print(f"{mode}: {(after - before) * 1024 / n:.0f} B per idle connection "
          f"({n} connections, RSS {before} -> {after} KiB)")
    del warm, held


if __name__ == "__main__":
    main()
