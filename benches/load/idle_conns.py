"""Opens N keep-alive connections, sends one request on each, keeps them idle, and reports
the gateway's RSS (from /proc/PID/status) while they are open, and how many the gateway
parked (portcullis_parked_connections, from the admin listener at ADMIN_PORT if given).

    idle_conns.py HOST PORT N PID [ADMIN_PORT]

Beyond 25,000 connections the client binds further loopback source addresses (127.0.0.2,
...), as one address has about 28,000 ephemeral ports towards one server port; the caller
raises the fd limits (`ulimit -n`) of both sides.
"""
import socket
import sys
import time
import urllib.request

host, port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
admin = int(sys.argv[5]) if len(sys.argv) > 5 else None
def rss():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


before = rss()
conns = []
request = f"GET /plain/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
IP_BIND_ADDRESS_NO_PORT = 24  # the port is chosen at connect, per destination
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if host == "127.0.0.1" and i >= 25000:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((f"127.0.0.{1 + i // 25000}", 0))
    s.connect((host, port))
    s.sendall(request)
    conns.append(s)
answered = 0
for s in conns:
    s.settimeout(5)
    if s.recv(4096).startswith(b"HTTP/1.1 200"):
        answered += 1
# Idle connections are parked between 1 and 2 s after their last byte; the allocator
# returns the freed pages within about 10 s (jemalloc's decay).
time.sleep(3)
early = rss()
parked = ""
if admin:
    metrics = urllib.request.urlopen(f"http://{host}:{admin}/metrics").read().decode()
    count = next(l.split()[1] for l in metrics.splitlines() if l.startswith("portcullis_parked_connections "))
    parked = f", {count} parked"
time.sleep(12)
mid = rss()
# jemalloc returns dirty pages over its decay time (10 s): 30 s is the settled figure.
time.sleep(15)
late = rss()
print(f"RSS with {answered}/{n} idle keep-alive connections{parked}: {early:.1f} MiB after 3 s, "
      f"{mid:.1f} MiB after 15 s, {late:.1f} MiB after 30 s (before: {before:.1f} MiB; "
      f"{(late - before) * 1024 / n:.2f} KiB a connection, "
      f"{before + (late - before) * 100000 / n:.0f} MiB projected for 100,000)")
for s in conns:
    s.close()
