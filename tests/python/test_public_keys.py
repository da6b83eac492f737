"""ImportPublicKey, GetPublicKey, DeletePublicKey, ListPublicKeys, and the
per-account quota of three keys under concurrency."""

import concurrent.futures as cf

import pytest
from botocore.exceptions import ClientError

from helpers import arn_re, client_error, p256_pem, p384_pem, rsa_pem, same_public_key


def test_import_get_list_delete(fresh_account):
    c, acct = fresh_account.client, fresh_account.creds.account_id
    _, pem = p384_pem()
    resp = c.import_public_key(publicKeyMaterial=pem, name="signer-1", tags={"owner": "backend"})
    key = resp["publicKey"]
    assert arn_re("public-key", account=acct).fullmatch(key["arn"]), key["arn"]
    assert key["name"] == "signer-1"
    assert key["tags"] == {"owner": "backend"}
    assert isinstance(key.get("fingerprint"), str) and key["fingerprint"], key
    assert same_public_key(key["publicKeyMaterial"], pem)

    got = c.get_public_key(arn=key["arn"])["publicKey"]
    assert got["arn"] == key["arn"]
    assert got["name"] == "signer-1"
    assert got["fingerprint"] == key["fingerprint"]
    assert got["tags"] == {"owner": "backend"}
    assert same_public_key(got["publicKeyMaterial"], pem)

    listed = c.list_public_keys()["publicKeys"]
    assert [(k["arn"], k["name"], k["tags"]) for k in listed] == [(key["arn"], "signer-1", {"owner": "backend"})]

    c.delete_public_key(arn=key["arn"])
    with client_error("ResourceNotFoundException"):
        c.get_public_key(arn=key["arn"])
    with client_error("ResourceNotFoundException"):
        c.delete_public_key(arn=key["arn"])
    assert c.list_public_keys()["publicKeys"] == []
    # once deleted, the same material may be imported again
    again = c.import_public_key(publicKeyMaterial=pem)["publicKey"]
    assert again["arn"] != key["arn"]
    assert again["fingerprint"] == key["fingerprint"]


def test_fingerprints_differ_per_key(fresh_account):
    c = fresh_account.client
    a = c.import_public_key(publicKeyMaterial=p384_pem()[1])["publicKey"]
    b = c.import_public_key(publicKeyMaterial=p384_pem()[1])["publicKey"]
    assert a["fingerprint"] != b["fingerprint"]
    assert a["arn"] != b["arn"]


def test_crlf_pem_accepted(fresh_account):
    _, pem = p384_pem()
    key = fresh_account.client.import_public_key(publicKeyMaterial=pem.replace("\n", "\r\n"))["publicKey"]
    assert same_public_key(key["publicKeyMaterial"], pem)


@pytest.mark.parametrize("material,why", [
    (p256_pem(), "P-256"),
    (rsa_pem(), "RSA"),
    ("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n", "garbage DER"),
    ("hello", "no PEM at all"),
    ("", "empty"),
])
def test_import_refuses_non_p384(fresh_account, material, why):
    c = fresh_account.client
    with client_error("ValidationException", "publicKeyMaterial"):
        c.import_public_key(publicKeyMaterial=material)
    assert c.list_public_keys()["publicKeys"] == [], why


def test_import_requires_material(fresh_account):
    with client_error("ValidationException", "publicKeyMaterial"):
        fresh_account.client.import_public_key(name="nokey")


def test_import_name_pattern(fresh_account):
    with client_error("ValidationException", "name"):
        fresh_account.client.import_public_key(publicKeyMaterial=p384_pem()[1], name="bad name")


def test_same_material_twice_conflicts(fresh_account):
    c = fresh_account.client
    _, pem = p384_pem()
    c.import_public_key(publicKeyMaterial=pem, name="first")
    with client_error("ConflictException"):
        c.import_public_key(publicKeyMaterial=pem, name="second")
    # the same key with CRLF line ends is the same material
    with client_error("ConflictException"):
        c.import_public_key(publicKeyMaterial=pem.replace("\n", "\r\n"), name="third")
    assert len(c.list_public_keys()["publicKeys"]) == 1


def test_same_material_in_another_account_is_fine(fresh_account, ivs2):
    _, pem = p384_pem()
    fresh_account.client.import_public_key(publicKeyMaterial=pem)
    other = ivs2.import_public_key(publicKeyMaterial=pem)["publicKey"]
    ivs2.delete_public_key(arn=other["arn"])


def test_fourth_key_exceeds_quota(fresh_account):
    c = fresh_account.client
    arns = [c.import_public_key(publicKeyMaterial=p384_pem()[1])["publicKey"]["arn"] for _ in range(3)]
    with client_error("ServiceQuotaExceededException", status=402):
        c.import_public_key(publicKeyMaterial=p384_pem()[1])
    assert sorted(k["arn"] for k in c.list_public_keys()["publicKeys"]) == sorted(arns)
    # deleting one frees a slot
    c.delete_public_key(arn=arns[0])
    c.import_public_key(publicKeyMaterial=p384_pem()[1])
    assert len(c.list_public_keys()["publicKeys"]) == 3


def test_get_delete_unknown_or_malformed(fresh_account):
    c, acct = fresh_account.client, fresh_account.creds.account_id
    with client_error("ResourceNotFoundException", "Zz0000000003"):
        c.get_public_key(arn=f"arn:aws:ivs:us-east-1:{acct}:public-key/Zz0000000003")
    with client_error("ResourceNotFoundException", "Zz0000000003"):
        c.delete_public_key(arn=f"arn:aws:ivs:us-east-1:{acct}:public-key/Zz0000000003")
    with client_error("ValidationException", "arn"):
        c.get_public_key(arn=f"arn:aws:ivs:us-east-1:{acct}:stage/Zz0000000003")
    with client_error("ValidationException", "arn"):
        c.delete_public_key(arn="public-key/Zz0000000003")


def test_list_public_keys_paginator(fresh_account):
    c = fresh_account.client
    arns = {c.import_public_key(publicKeyMaterial=p384_pem()[1], name=f"k{i}")["publicKey"]["arn"] for i in range(3)}
    pages = list(c.get_paginator("list_public_keys").paginate(PaginationConfig={"PageSize": 1}))
    assert len(pages) == 3
    seen = [k["arn"] for p in pages for k in p["publicKeys"]]
    assert sorted(seen) == sorted(arns)
    with client_error("ValidationException", "maxResults"):
        c.list_public_keys(maxResults=0)
    with client_error("ValidationException", "maxResults"):
        c.list_public_keys(maxResults=101)


def test_fifty_parallel_imports_leave_exactly_three(fresh_account):
    c = fresh_account.client
    pems = [p384_pem()[1] for _ in range(25)]
    work = pems + pems  # every key twice: each call is either first, a duplicate, or over quota

    def one(pem):
        try:
            return "ok", c.import_public_key(publicKeyMaterial=pem)["publicKey"]
        except ClientError as e:
            return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]

    with cf.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, work))
    ok = [r[1] for r in results if r[0] == "ok"]
    failures = [r for r in results if r[0] != "ok"]
    assert len(ok) == 3, f"{len(ok)} imports succeeded: {[r[0] for r in results]}"
    assert len({k["fingerprint"] for k in ok}) == 3
    assert all(code in ("ServiceQuotaExceededException", "ConflictException") for code, _ in failures), failures
    assert all(status == (402 if code == "ServiceQuotaExceededException" else 409) for code, status in failures)
    listed = c.list_public_keys()["publicKeys"]
    assert sorted(k["arn"] for k in listed) == sorted(k["arn"] for k in ok)
