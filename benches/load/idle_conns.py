"""Opens N keep-alive connections, sends one request on each, keeps them idle, and reports
the gateway's RSS (from /proc/PID/status) while they are open."""
import socket
import sys
import time

host, port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
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
time.sleep(2)
with open(f"/proc/{pid}/status") as f:
    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
print(f"RSS with {answered}/{n} idle keep-alive connections: {rss / 1024:.1f} MiB (target: <= 64 MiB)")
for s in conns:
    s.close()
