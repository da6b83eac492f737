"""Pagination: opaque, stable nextTokens under concurrent inserts; forged tokens;
default page sizes; boto3 paginators."""

import base64
import threading

import pytest

from helpers import TOKEN_RE, client_error, p384_pem


def check_token(tok: str) -> None:
    assert isinstance(tok, str) and tok
    assert TOKEN_RE.fullmatch(tok), f"nextToken {tok!r} has characters outside [a-zA-Z0-9+/=_-]"
    assert len(tok) <= 1024


def test_pages_are_stable_under_concurrent_inserts(fresh_account, server):
    c = fresh_account.client
    initial = {c.create_stage(name=f"initial-{i}")["stage"]["arn"] for i in range(10)}
    inserted = []
    stop = threading.Event()
    writer_client = server.client(fresh_account.creds)

    def writer():
        i = 0
        while not stop.is_set() and i < 40:
            inserted.append(writer_client.create_stage(name=f"concurrent-{i}")["stage"]["arn"])
            i += 1

    seen = []
    pages = 0
    t = threading.Thread(target=writer)
    resp = c.list_stages(maxResults=3)
    t.start()
    try:
        while True:
            pages += 1
            seen += [s["arn"] for s in resp["stages"]]
            assert len(resp["stages"]) <= 3
            tok = resp.get("nextToken")
            if not tok:
                break
            check_token(tok)
            # and deterministic inserts between pages, too
            inserted.append(c.create_stage(name=f"between-{pages}")["stage"]["arn"])
            resp = c.list_stages(maxResults=3, nextToken=tok)
            assert pages < 200, "pagination does not end"
    finally:
        stop.set()
        t.join()
    assert pages > 3, "expected more than three pages"
    assert len(seen) == len(set(seen)), f"items repeated across pages: {[a for a in seen if seen.count(a) > 1]}"
    missing = initial - set(seen)
    assert not missing, f"items that existed at the start were skipped: {missing}"
    assert set(seen) <= initial | set(inserted)


def test_exact_multiple_of_page_size(fresh_account):
    c = fresh_account.client
    made = {c.create_stage()["stage"]["arn"] for _ in range(6)}
    seen, tok, calls = [], None, 0
    while True:
        resp = c.list_stages(maxResults=3, **({"nextToken": tok} if tok else {}))
        calls += 1
        seen += [s["arn"] for s in resp["stages"]]
        tok = resp.get("nextToken")
        if not tok:
            break
    assert sorted(seen) == sorted(made)
    assert calls in (2, 3)


def test_default_page_size_is_50(fresh_account):
    c = fresh_account.client
    for i in range(51):
        c.create_stage(name=f"s{i}")
    first = c.list_stages()
    assert len(first["stages"]) == 50
    check_token(first["nextToken"])
    rest = c.list_stages(nextToken=first["nextToken"])
    assert len(rest["stages"]) == 1 and "nextToken" not in rest


def test_max_results_100(fresh_account):
    c = fresh_account.client
    for i in range(5):
        c.create_stage()
    assert len(c.list_stages(maxResults=100)["stages"]) == 5


@pytest.mark.parametrize("forged", [
    "AAAA",
    "eyJvZmZzZXQiOjEwfQ==",  # base64 of {"offset":10}
    "0",
    "-_-_",
    base64.b64encode(b"\x00" * 64).decode(),
])
def test_forged_token_refused(ivs, forged):
    with client_error("ValidationException", "nextToken"):
        ivs.list_stages(nextToken=forged)


def test_tampered_token_refused(fresh_account):
    c = fresh_account.client
    for _ in range(3):
        c.create_stage()
    tok = c.list_stages(maxResults=1)["nextToken"]
    check_token(tok)
    i = len(tok) // 2
    flipped = tok[:i] + ("A" if tok[i] != "A" else "B") + tok[i + 1:]
    with client_error("ValidationException", "nextToken"):
        c.list_stages(maxResults=1, nextToken=flipped)
    with client_error("ValidationException", "nextToken"):
        c.list_stages(maxResults=1, nextToken=tok[:-4])


def test_token_of_another_account_gives_nothing_of_theirs(fresh_account, ivs2):
    c = fresh_account.client
    mine = {c.create_stage()["stage"]["arn"] for _ in range(3)}
    tok = c.list_stages(maxResults=1)["nextToken"]
    from botocore.exceptions import ClientError
    try:
        resp = ivs2.list_stages(maxResults=100, nextToken=tok)
    except ClientError as e:
        assert e.response["Error"]["Code"] == "ValidationException", e.response
    else:
        assert not (mine & {s["arn"] for s in resp["stages"]}), "another account's stages leaked through a nextToken"


def test_public_key_paginator(fresh_account):
    c = fresh_account.client
    arns = {c.import_public_key(publicKeyMaterial=p384_pem()[1])["publicKey"]["arn"] for _ in range(3)}
    paginator = c.get_paginator("list_public_keys")
    pages = list(paginator.paginate(PaginationConfig={"PageSize": 2}))
    assert [len(p["publicKeys"]) for p in pages] == [2, 1]
    check_token(pages[0]["nextToken"])
    assert {k["arn"] for p in pages for k in p["publicKeys"]} == arns
    full = paginator.paginate(PaginationConfig={"PageSize": 1, "MaxItems": 2}).build_full_result()
    assert len(full["publicKeys"]) == 2
    assert full.get("NextToken")  # boto3's resume token
    more = paginator.paginate(PaginationConfig={"PageSize": 1, "StartingToken": full["NextToken"]}).build_full_result()
    assert {k["arn"] for k in full["publicKeys"] + more["publicKeys"]} == arns


def test_storage_configuration_pages(fresh_account):
    c = fresh_account.client
    made = {c.create_storage_configuration(s3={"bucketName": f"bucket-{i}"})["storageConfiguration"]["arn"]
            for i in range(5)}
    seen, tok = [], None
    while True:
        resp = c.list_storage_configurations(maxResults=2, **({"nextToken": tok} if tok else {}))
        seen += [x["arn"] for x in resp["storageConfigurations"]]
        tok = resp.get("nextToken")
        if not tok:
            break
        check_token(tok)
    assert sorted(seen) == sorted(made)


def test_token_not_valid_for_different_page_size_or_operation_leaks_nothing(fresh_account):
    """A token from one list used on another list must not crash the server."""
    c = fresh_account.client
    for i in range(3):
        c.create_stage()
        c.create_encoder_configuration()
    tok = c.list_stages(maxResults=1)["nextToken"]
    from botocore.exceptions import ClientError
    try:
        resp = c.list_encoder_configurations(nextToken=tok)
        assert all(":encoder-configuration/" in x["arn"] for x in resp["encoderConfigurations"])
    except ClientError as e:
        assert e.response["Error"]["Code"] == "ValidationException", e.response


def test_deleting_the_cursor_item_between_pages(fresh_account):
    c = fresh_account.client
    made = {c.create_stage()["stage"]["arn"] for _ in range(6)}
    first = c.list_stages(maxResults=2)
    seen = [s["arn"] for s in first["stages"]]
    for arn in seen:  # delete what was just returned, including the item the token points after
        c.delete_stage(arn=arn)
    tok, later = first["nextToken"], []
    while tok:
        resp = c.list_stages(maxResults=2, nextToken=tok)
        later += [s["arn"] for s in resp["stages"]]
        tok = resp.get("nextToken")
    assert sorted(later) == sorted(made - set(seen))


def test_page_size_may_change_between_pages(fresh_account):
    c = fresh_account.client
    made = {c.create_stage()["stage"]["arn"] for _ in range(7)}
    first = c.list_stages(maxResults=2)
    second = c.list_stages(maxResults=5, nextToken=first["nextToken"])
    assert len(second["stages"]) == 5
    assert "nextToken" not in second
    assert {s["arn"] for s in first["stages"] + second["stages"]} == made
