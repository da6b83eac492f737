"""Requests that a careless SigV4 verifier would accept: a signature that leaves
`host` out, and a query whose `+` the verifier and the router read differently."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

import requests

from helpers import DEV, REGION, assert_error, signed_request, tags_path


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def hand_signed(server, method: str, path: str, body: bytes, headers: dict[str, str],
                signed: list[str]) -> requests.Response:
    """Signs exactly the headers named in `signed` (lower-case), as SigV4 would."""
    now = dt.datetime.now(dt.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {**headers, "x-amz-date": amz_date}
    lower = {k.lower(): v for k, v in headers.items()}
    canonical = "\n".join([
        method, path, "",
        *(f"{h}:{lower[h].strip()}" for h in sorted(signed)), "",
        ";".join(sorted(signed)), hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{day}/{REGION}/ivs/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{DEV.secret_key}".encode(), day), REGION), "ivs"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={DEV.access_key}/{scope}, "
                                f"SignedHeaders={';'.join(sorted(signed))}, Signature={signature}")
    return requests.request(method, server.url + path, data=body, headers=headers, timeout=10)


def test_a_signature_must_cover_host(target):
    body = json.dumps({"name": "unsigned-host"}).encode()
    headers = {"Content-Type": "application/json", "Host": target.host}
    r = hand_signed(target, "POST", "/CreateStage", body, headers, ["content-type", "x-amz-date"])
    assert_error(r, "IncompleteSignatureException", "Host", status=403)
    # The same signer with host signed is accepted: the refusal is about host alone.
    r = hand_signed(target, "POST", "/CreateStage", body, headers, ["content-type", "host", "x-amz-date"])
    assert r.status_code == 200, r.text
    assert target.client().list_stages()["stages"][0]["name"] == "unsigned-host"


def test_plus_in_a_query_means_the_same_to_signature_and_router(target):
    c = target.client()
    arn = c.create_stage(name="plus")["stage"]["arn"]
    c.tag_resource(resourceArn=arn, tags={"a b": "space", "a+b": "plus", "keep": "yes"})
    # A raw `+` is a plus sign to the verifier and the router alike; botocore puts
    # it into the canonical query as it stands, so the signatures differ and
    # nothing is deleted under a meaning the signer did not sign.
    r = signed_request(target, "DELETE", tags_path(arn), b"", query="tagKeys=a+b")
    assert_error(r, "InvalidSignatureException", status=403)
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"a b": "space", "a+b": "plus", "keep": "yes"}
    # %2B is the plus sign, %20 the space: each removes its own tag.
    r = signed_request(target, "DELETE", tags_path(arn), b"", query="tagKeys=a%2Bb")
    assert r.status_code in (200, 204), r.text
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"a b": "space", "keep": "yes"}
    r = signed_request(target, "DELETE", tags_path(arn), b"", query="tagKeys=a%20b")
    assert r.status_code in (200, 204), r.text
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"keep": "yes"}


def test_a_query_altered_after_signing_is_refused(target):
    c = target.client()
    arn = c.create_stage(name="altered")["stage"]["arn"]
    c.tag_resource(resourceArn=arn, tags={"a b": "space", "keep": "yes"})
    signed = signed_request(target, "DELETE", tags_path(arn), b"", query="tagKeys=a%20b",
                            tamper=None)
    assert signed.status_code in (200, 204)
    c.tag_resource(resourceArn=arn, tags={"a b": "space"})

    # Sign one query, send another that a form decoder would read the same way.
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    req = AWSRequest(method="DELETE", url=f"{target.url}{tags_path(arn)}?tagKeys=a%20b", data=b"")
    SigV4Auth(Credentials(DEV.access_key, DEV.secret_key), "ivs", REGION).add_auth(req)
    r = requests.delete(f"{target.url}{tags_path(arn)}?tagKeys=a+b", headers=dict(req.headers.items()),
                        timeout=10)
    assert_error(r, "InvalidSignatureException", status=403)
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"a b": "space", "keep": "yes"}
