"""ImportPublicKey takes exactly one PUBLIC KEY block: a key smuggled beside another
block could be fingerprinted as one key and verify tokens as another."""

from __future__ import annotations

import pytest

from helpers import client_error, p256_pem, p384_pem


def _other_block(label: str) -> str:
    _, pem = p384_pem()
    body = pem.split("-----")[2]
    return f"-----BEGIN {label}-----{body}-----END {label}-----\n"


@pytest.mark.parametrize("shape", [
    "certificate first", "two keys", "text before", "text after", "p256 first",
])
def test_only_one_public_key_block_is_accepted(fresh_account, shape):
    _, pem = p384_pem()
    _, second = p384_pem()
    material = {
        "certificate first": _other_block("CERTIFICATE") + pem,
        "two keys": pem + second,
        "text before": "my key:\n" + pem,
        "text after": pem + "that was my key\n",
        "p256 first": p256_pem() + pem,
    }[shape]
    with client_error("ValidationException", "publicKeyMaterial"):
        fresh_account.client.import_public_key(publicKeyMaterial=material)


def test_one_block_with_whitespace_around_is_accepted(fresh_account):
    _, pem = p384_pem()
    key = fresh_account.client.import_public_key(publicKeyMaterial="\n  " + pem + "\n\n")["publicKey"]
    assert key["fingerprint"]
