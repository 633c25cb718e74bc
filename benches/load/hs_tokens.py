"""Prints N distinct HS256 tokens (iss/aud of benches/load/run.sh's config), one a line."""
import base64
import hashlib
import hmac
import json
import sys
import time

secret, n = sys.argv[1].encode(), int(sys.argv[2])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
exp = int(time.time()) + 3600
out = sys.stdout
for i in range(n):
    claims = {"iss": "https://issuer.load", "aud": "app", "sub": f"user{i}", "exp": exp, "jti": str(i)}
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    message = f"{header}.{payload}".encode()
    signature = b64(hmac.new(secret, message, hashlib.sha256).digest())
    out.write(f"{header}.{payload}.{signature}\n")
