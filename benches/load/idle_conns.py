"""Opens N keep-alive connections, sends one request on each, keeps them idle, and reports
the gateway's RSS (from /proc/PID/status) while they are open, and how many the gateway
parked (portcullis_parked_connections, from the admin listener at ADMIN_PORT if given).

    idle_conns.py HOST PORT N PID [ADMIN_PORT]
"""
import socket
import sys
import time
import urllib.request

host, port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
admin = int(sys.argv[5]) if len(sys.argv) > 5 else None
conns = []
request = f"GET /plain/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
for _ in range(n):
    s = socket.create_connection((host, port))
    s.sendall(request)
    conns.append(s)
answered = 0
for s in conns:
    s.settimeout(5)
    if s.recv(4096).startswith(b"HTTP/1.1 200"):
        answered += 1
def rss():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


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
print(f"RSS with {answered}/{n} idle keep-alive connections{parked}: {early:.1f} MiB after 3 s, "
      f"{rss():.1f} MiB after 15 s (target: <= 64 MiB)")
for s in conns:
    s.close()
