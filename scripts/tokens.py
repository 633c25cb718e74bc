"""Prints N distinct tokens (iss/aud of the load configs), one a line.

    tokens.py hs256 SECRET N        HS256 with SECRET
    tokens.py eddsa KEYDIR N        EdDSA; writes KEYDIR/ed.pub.pem (the key is made here)
    tokens.py rs256 KEYDIR N        RS256 (2048-bit); writes KEYDIR/rs.pub.pem
    tokens.py es256 KEYDIR N        ES256 (P-256); writes KEYDIR/es.pub.pem
"""
import base64
import hashlib
import hmac
import json
import sys
import time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


alg, arg, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if alg == "hs256":
    secret = arg.encode()
    header = {"alg": "HS256", "typ": "JWT"}
    sign = lambda message: hmac.new(secret, message, hashlib.sha256).digest()
elif alg == "eddsa":
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(f"{arg}/ed.pub.pem", "wb") as f:
        f.write(pem)
    header = {"alg": "EdDSA", "typ": "JWT"}
    sign = key.sign
elif alg == "rs256":
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(f"{arg}/rs.pub.pem", "wb") as f:
        f.write(pem)
    header = {"alg": "RS256", "typ": "JWT"}
    sign = lambda message: key.sign(message, padding.PKCS1v15(), hashes.SHA256())
elif alg == "es256":
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(f"{arg}/es.pub.pem", "wb") as f:
        f.write(pem)
    header = {"alg": "ES256", "typ": "JWT"}

    def sign(message):
        # JWS wants r || s (32 bytes each), not the DER that `cryptography` returns.
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

else:
    sys.exit(f"unknown algorithm {alg}")

head = b64(json.dumps(header, separators=(",", ":")).encode())
exp = int(time.time()) + 3600
out = sys.stdout
for i in range(n):
    claims = {"iss": "https://issuer.load", "aud": "app", "sub": f"user{i}", "exp": exp, "jti": str(i)}
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    message = f"{head}.{payload}".encode()
    out.write(f"{head}.{payload}.{b64(sign(message))}\n")
