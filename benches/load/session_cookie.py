#!/usr/bin/env python3
"""A login session for load tests, without an IdP: writes a session for `sub` into the
Redis store (as `[login] store = "redis"` keeps them) and prints the cookie value that
names it, sealed like the gateway's cookies (AES-256-GCM, the cookie name as associated
data, version byte 1, 12-byte nonce, base64url).

    session_cookie.py REDIS_PORT COOKIE_KEY_B64 ISSUER [SUB] [PREFIX] [COOKIE_NAME]

Needs redis-cli and python3 `cryptography`.
"""
import base64
import json
import os
import subprocess
import sys
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

port, key_b64, issuer = sys.argv[1], sys.argv[2], sys.argv[3]
sub = sys.argv[4] if len(sys.argv) > 4 else "alice"
prefix = sys.argv[5] if len(sys.argv) > 5 else "portcullis:"
name = sys.argv[6] if len(sys.argv) > 6 else "portcullis"

now = int(time.time())
session_id = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
session = {
    "claims": {"iss": issuer, "sub": sub, "email": f"{sub}@example.com"},
    "created": now,
    "last_seen": now,
    "expires": now + 36000,
    "id_exp": now + 36000,
}
subprocess.run(
    ["redis-cli", "-p", port, "SET", f"{prefix}s:{session_id}", json.dumps(session), "EX", "36000"],
    check=True,
    stdout=subprocess.DEVNULL,
)
key = base64.b64decode(key_b64 + "=" * (-len(key_b64) % 4))
nonce = os.urandom(12)
sealed = AESGCM(key).encrypt(nonce, session_id.encode(), name.encode())
print(base64.urlsafe_b64encode(b"\x01" + nonce + sealed).rstrip(b"=").decode())
