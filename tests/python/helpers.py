"""Shared helpers: credentials, raw SigV4 requests, error and header assertions,
key generation and token verification. Constants here are derived from the
behavioural contract and the IVS Real-Time service model; nothing is read from
outside the repository."""

from __future__ import annotations

import datetime as dt
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock
from urllib.parse import quote

import jwt
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REGION = "us-east-1"


@dataclass(frozen=True)
class Creds:
    access_key: str
    secret_key: str
    account_id: str


DEV = Creds("onstage", "onstage-secret", "000000000000")
SECOND = Creds("AKIDSECOND", "second-secret", "111111111111")

# Extra accounts configured on the shared server, one per test that needs a clean
# account (public-key quota, exact list contents).
POOL_SIZE = 200


def pool_creds(i: int) -> Creds:
    return Creds(f"AKIDPOOL{i:04d}", f"pool-secret-{i}", f"2{i:011d}")


def config_toml(extra_keys: list[Creds], with_dev: bool = True) -> str:
    """A configuration file with `extra_keys` as [[access_keys]]. The development key
    is active only when no other key is configured, so `with_dev` configures it
    explicitly as the primary key."""
    out = []
    if with_dev:
        out.append(f'access_key_id = "{DEV.access_key}"')
        out.append(f'secret_access_key = "{DEV.secret_key}"')
        out.append("")
    for c in extra_keys:
        out.append("[[access_keys]]")
        out.append(f'access_key_id = "{c.access_key}"')
        out.append(f'secret_access_key = "{c.secret_key}"')
        out.append(f'account_id = "{c.account_id}"')
        out.append("")
    return "\n".join(out)


# --- the seven IVS response headers, exactly as the contract gives them -------------
SEVEN_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Cache-Control": "no-store, no-cache",
    "Content-Security-Policy": "default-src 'self'; upgrade-insecure-requests;",
    "Strict-Transport-Security": "max-age:47304000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def assert_seven_headers(headers) -> None:
    """`headers` is case-insensitive (requests) or lower-cased (botocore's HTTPHeaders dict)."""
    lower = {k.lower(): v for k, v in headers.items()}
    for name, value in SEVEN_HEADERS.items():
        assert name.lower() in lower, f"missing header {name}; got {sorted(lower)}"
        assert lower[name.lower()] == value, f"{name}: {lower[name.lower()]!r} != {value!r}"
    expose = lower.get("access-control-expose-headers")
    assert expose is not None and expose.strip(), "missing Access-Control-Expose-Headers"


# --- patterns from the model ------------------------------------------------------------
ID = r"[a-zA-Z0-9]{12}"


def arn_re(kind: str, account: str = DEV.account_id, region: str = REGION) -> re.Pattern:
    return re.compile(rf"arn:aws:ivs:{region}:{account}:{kind}/{ID}")


def resource_id(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


TOKEN_RE = re.compile(r"[a-zA-Z0-9+/=_-]*")
SESSION_ID = "st-AAAAAAAAAAAAA"  # well-formed (st- + 13), never issued
TIMESTAMP_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


# --- raw SigV4 requests ---------------------------------------------------------------------
def signed_request(server, method: str, path: str, body: bytes | str | None = b"", *,
                   creds: Creds = DEV, service: str = "ivs", region: str = REGION,
                   headers: dict | None = None, query: str = "", skew: dt.timedelta | None = None,
                   sign: bool = True, tamper=None) -> requests.Response:
    """Sends `method path` to `server`, signed with botocore's SigV4Auth.

    `headers` are added before signing (so they are signed). `skew` shifts the
    signing clock. `tamper(body) -> body` changes the body after signing."""
    if isinstance(body, str):
        body = body.encode()
    url = server.url + path + (f"?{query}" if query else "")
    h = dict(headers or {})
    req = AWSRequest(method=method, url=url, data=body or b"", headers=h)
    if sign:
        auth = SigV4Auth(Credentials(creds.access_key, creds.secret_key), service, region)
        if skew is None:
            auth.add_auth(req)
        else:
            when = dt.datetime.now(dt.timezone.utc) + skew
            with mock.patch("botocore.auth.get_current_datetime", return_value=when):
                auth.add_auth(req)
    send_body = body or b""
    if tamper is not None:
        send_body = tamper(send_body)
    return requests.request(method, url, data=send_body, headers=dict(req.headers.items()), timeout=30)


def call(server, operation: str, payload=None, *, creds: Creds = DEV, raw_body: bytes | None = None,
         **kw) -> requests.Response:
    """POST /<operation> with a JSON body, signed like an AWS SDK would."""
    body = raw_body if raw_body is not None else json.dumps(payload if payload is not None else {}).encode()
    headers = {"Content-Type": "application/json"}
    headers.update(kw.pop("headers", {}) or {})
    return signed_request(server, "POST", f"/{operation}", body, creds=creds, headers=headers, **kw)


def tags_path(arn: str) -> str:
    return "/tags/" + quote(arn, safe="")


# --- error assertions --------------------------------------------------------------------------
STATUS = {
    "ValidationException": 400,
    "SerializationException": 400,
    "ServiceQuotaExceededException": 402,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "UnknownOperationException": 404,
    "ConflictException": 409,
    "NotImplementedException": 501,
}


def assert_error(resp: requests.Response, error_type: str, *mentions: str, status: int | None = None) -> dict:
    """An AWS-style error: status, x-amzn-ErrorType, both message fields equal, the
    message naming each of `mentions`, and the seven headers."""
    status = status or STATUS[error_type]
    assert resp.status_code == status, f"expected {status} {error_type}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("x-amzn-ErrorType") == error_type, (
        f"x-amzn-ErrorType {resp.headers.get('x-amzn-ErrorType')!r} != {error_type!r}; body {resp.text}")
    body = resp.json()
    assert isinstance(body.get("message"), str) and body["message"], f"no message in {body}"
    assert body.get("exceptionMessage") == body["message"], f"exceptionMessage != message in {body}"
    for m in mentions:
        assert m in body["message"], f"message does not name {m!r}: {body['message']!r}"
    assert_seven_headers(resp.headers)
    return body


@contextmanager
def client_error(code: str, *mentions: str, status: int | None = None):
    """`with client_error("ValidationException", "name"): client.op(...)`."""
    status = status or STATUS[code]
    with pytest.raises(ClientError) as info:
        yield info
    err = info.value.response
    assert err["Error"]["Code"] == code, f"expected {code}, got {err['Error']} (HTTP {err['ResponseMetadata']['HTTPStatusCode']})"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == status, err
    msg = err["Error"].get("Message", "")
    assert msg, f"botocore shows an empty message for {code}: {err}"
    for m in mentions:
        assert m in msg, f"message does not name {m!r}: {msg!r}"
    assert_seven_headers(err["ResponseMetadata"]["HTTPHeaders"])


# --- keys -----------------------------------------------------------------------------------------
def p384_pem() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, pem


def p256_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def same_public_key(pem_a: str, pem_b: str) -> bool:
    a = serialization.load_pem_public_key(pem_a.encode())
    b = serialization.load_pem_public_key(pem_b.encode())
    der = lambda k: k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der(a) == der(b)


# --- tokens -----------------------------------------------------------------------------------------
def fetch_jwks(server) -> dict:
    r = requests.get(f"{server.url}/.well-known/jwks.json", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def verify_token(server, token: str, jwks: dict | None = None) -> dict:
    """Verifies `token` with the server's published JWKS (ES384, matching kid) and
    returns its claims."""
    jwks = jwks or fetch_jwks(server)
    header = jwt.get_unverified_header(token)
    assert header.get("alg") == "ES384", header
    kid = header.get("kid")
    assert kid, f"token header has no kid: {header}"
    matches = [k for k in jwks["keys"] if k.get("kid") == kid]
    assert len(matches) == 1, f"kid {kid!r} not (uniquely) in the JWKS {jwks}"
    jwk = jwt.PyJWK.from_dict(matches[0])
    return jwt.decode(token, jwk.key, algorithms=["ES384"],
                      options={"require": ["exp", "iat", "jti"], "verify_aud": False})
