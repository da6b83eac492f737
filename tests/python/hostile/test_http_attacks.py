"""Attacks on the HTTP port that cost an attacker little: connections that send half
a header and stop (slowloris), and bodies of up to 1 MiB that stall before the
request is authenticated. While each attack holds its connections, the server must
keep answering signed calls and carry a real aiortc publish and subscribe; it must
keep its memory and stay up. Figures are printed (pytest -s) for docs/SECURITY.md."""

from __future__ import annotations

import os
import select
import time

from attacks import MIB, Health, connect, held

SLOWLORIS_CONNECTIONS = 1100
BODY_CONNECTIONS = 300
BODY_BYTES = MIB - 4096


def half_header(port: int) -> bytes:
    return (f"POST /ListStages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/x-amz-json-1.1\r\nX-Amz-Da").encode()


def test_slowloris_leaves_signed_calls_working(target):
    health = Health(target)
    with held([]) as socks:
        for _ in range(SLOWLORIS_CONNECTIONS):
            s = connect(target.port)
            s.sendall(half_header(target.port))
            socks.append(s)
        health.check()
        health.check_media()
        for _ in range(3):
            health.check()
        fds = len(os.listdir(f"/proc/{target.proc.pid}/fd"))
    health.check()
    health.assert_memory()
    health.report("slowloris", connections=SLOWLORIS_CONNECTIONS, server_fds_during=fds,
                  signed_call_seconds=f"{health.last_call_seconds:.3f}",
                  media_round_trip_seconds=f"{health.last_media_seconds:.2f}")


def test_connection_cap_holds_and_is_logged(server_factory):
    cap = 64
    srv = server_factory(extra_args=["--max-connections", str(cap)])
    baseline_fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
    with held([]) as socks:
        for _ in range(3 * cap):
            s = connect(srv.port)  # beyond the cap the kernel's backlog takes them
            s.sendall(half_header(srv.port))
            socks.append(s)
        deadline = time.monotonic() + 10
        while "connection limit reached" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
        assert fds <= baseline_fds + cap, (baseline_fds, fds)
        assert "connection limit reached" in srv.log()
    # The attackers gone, the slots come back.
    srv.client().list_stages()
    assert srv.proc.poll() is None


def stalled_bodies(port: int, request_head: bytes, count: int, body_bytes: int, within: float = 8.0):
    """Opens `count` connections that each send `request_head` and then as much of a
    `body_bytes` body as the server takes, and stall. Returns the sockets and the
    bytes the server took in all."""
    socks = []
    for _ in range(count):
        s = connect(port)
        s.sendall(request_head)
        s.setblocking(False)
        socks.append(s)
    chunk = b"x" * (64 * 1024)
    left = {s: body_bytes for s in socks}
    sent_total = 0
    deadline = time.monotonic() + within
    while left and time.monotonic() < deadline:
        _, writable, _ = select.select([], list(left), [], 0.2)
        if not writable:
            break  # nobody reads any more: every body is stalled where it is
        for s in writable:
            try:
                n = s.send(chunk[:min(len(chunk), left[s])])
            except OSError:
                del left[s]
                continue
            sent_total += n
            left[s] -= n
            if left[s] == 0:
                del left[s]
    return socks, sent_total


def test_unsigned_bodies_are_refused_before_they_are_read(target):
    health = Health(target)
    head = (f"POST /CreateStage HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n"
            f"Content-Type: application/x-amz-json-1.1\r\nContent-Length: {BODY_BYTES}\r\n\r\n").encode()
    socks, sent = stalled_bodies(target.port, head, BODY_CONNECTIONS, BODY_BYTES)
    with held(socks):
        health.sample()
        health.check()
        health.check_media()
        answered = 0
        for s in socks:
            s.setblocking(True)
            s.settimeout(5)
            try:
                if s.recv(64).startswith(b"HTTP/1.1 403"):
                    answered += 1
            except OSError:
                pass
        health.sample()
    health.check()
    health.assert_memory()
    assert answered == BODY_CONNECTIONS, f"{answered} of {BODY_CONNECTIONS} answered 403 at once"
    health.report("body-before-auth", connections=BODY_CONNECTIONS, body_bytes_each=BODY_BYTES,
                  bytes_the_server_took=sent, answered_403=answered,
                  media_round_trip_seconds=f"{health.last_media_seconds:.2f}")


def test_oversized_declared_body_is_refused_unread(target):
    head = (f"POST /CreateStage HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n"
            f"Content-Length: {64 * MIB}\r\n\r\n").encode()
    s = connect(target.port)
    with held([s]):
        s.sendall(head)
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:100]


def test_forged_signatures_under_a_known_key_id_hold_little(target):
    """Access key ids are not secret: a forged signature under a real one passes the
    header checks, so its body is read before the signature fails. Large bodies
    share one budget; beyond it they are refused (503) before being read."""
    import datetime as dt
    health = Health(target)
    now = dt.datetime.now(dt.timezone.utc)
    amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    head = (f"POST /CreateStage HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nX-Amz-Date: {amz}\r\n"
            f"Authorization: AWS4-HMAC-SHA256 Credential=onstage/{day}/us-east-1/ivs/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}\r\n"
            f"Content-Length: {BODY_BYTES}\r\n\r\n").encode()
    socks, sent = stalled_bodies(target.port, head, BODY_CONNECTIONS, BODY_BYTES - 1)
    with held(socks):
        health.sample()
        health.check()
        health.check_media()
        health.sample()
    health.check()
    health.assert_memory()
    health.report("forged-signature-known-key", connections=BODY_CONNECTIONS, body_bytes_each=BODY_BYTES,
                  bytes_the_server_took=sent, media_round_trip_seconds=f"{health.last_media_seconds:.2f}")


def test_whip_offers_without_a_token_are_refused_before_they_are_read(target):
    """A WHIP POST is answered from its headers when it carries no bearer token, or
    one that is not a decodable ES384 JWT: the offer is never read (the client sent
    only the head, announcing a full 64 KiB offer)."""
    health = Health(target)
    offer_bytes = 64 * 1024
    cases = {
        "no token": "",
        "not a JWT": "Authorization: Bearer not-a-jwt\r\n",
        "JWT of another algorithm": "Authorization: Bearer eyJhbGciOiJub25lIn0.e30.\r\n",
    }
    socks = []
    with held(socks):
        for _ in range(BODY_CONNECTIONS // len(cases)):
            for auth in cases.values():
                s = connect(target.port)
                s.sendall((f"POST /whip HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n{auth}"
                           f"Content-Type: application/sdp\r\nContent-Length: {offer_bytes}\r\n\r\n").encode())
                socks.append(s)
        answered = 0
        for s in socks:
            s.settimeout(5)
            try:
                if s.recv(64).startswith(b"HTTP/1.1 401"):
                    answered += 1
            except OSError:
                pass
        health.sample()
        health.check()
    health.check()
    health.assert_memory()
    assert answered == len(socks), f"{answered} of {len(socks)} answered 401 from their headers"
    health.report("whip-offer-before-token", connections=len(socks), declared_offer_bytes=offer_bytes,
                  answered_401=answered)
