#!/usr/bin/env python3
"""A config with ROUTES routes over HOSTS hosts (an intranet's worth of rules), for the
route-table scale rows: `portcullis check`, start and reload time and RSS.

    python3 benches/load/big_config.py ROUTES HOSTS DIR   # writes DIR/big.toml, DIR/dev/*

Each host gets a share of the routes: exact paths, prefixes, method-restricted routes,
public and JWT routes, a few requirements; every tenth host is a wildcard. Keys and the
TLS pair come from config/dev.
"""
import os
import shutil
import sys

routes, hosts, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.makedirs(os.path.join(out, "dev"), exist_ok=True)
for name in ("tls.crt", "tls.key", "signing.pub.pem"):
    shutil.copy(os.path.join(root, "config", "dev", name), os.path.join(out, "dev", name))

lines = [
    "[server]",
    'http = "127.0.0.1:0"',
    "",
    "[providers.dev]",
    'issuer = "https://portcullis.dev.local"',
    'audiences = ["echo"]',
    'algorithms = ["RS256"]',
    'public_keys = [{ file = "dev/signing.pub.pem", kid = "dev-1" }]',
    "",
    "[upstreams.echo]",
    'builtin = "echo"',
    "",
]
for i in range(routes):
    h = i % hosts
    n = i // hosts
    host = f"*.zone{h}.corp.example" if h % 10 == 9 else f"app{h}.corp.example"
    lines += ["[[routes]]", f'name = "r{i}"', f'host = "{host}"']
    if n % 3 == 0:
        lines.append(f'path = "/svc{n}/status"')
    else:
        lines.append(f'path_prefix = "/svc{n}"')
    if n % 7 == 1:
        lines.append('methods = ["GET", "HEAD"]')
    lines.append('upstream = "echo"')
    if n % 4 == 0:
        lines.append('auth = "public"')
    else:
        lines.append('auth = "jwt"')
        if n % 5 == 2:
            lines.append(f'require = {{ scopes = ["svc{n % 50}"] }}')
    lines.append("")
with open(os.path.join(out, "big.toml"), "w") as f:
    f.write("\n".join(lines))
