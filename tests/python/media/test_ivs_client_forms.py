"""The connection forms IVS's own client libraries use (BEHAVIOUR §4.11), spoken by an
aiortc client exactly as those libraries speak them: publish at
`{whip_url}/publish/{jti}` with the `X-Stages-*` headers, the events socket at
`{events_url}?error_over_ws=1&topic={stage}/publishers&traceid=…`, numbered
STAGE_STATEs, SET_STATE, `aws:ivs:DISCONNECT`, `aws:ivs:JOIN_ERROR`,
RevokeConnectionToken (boto3 and the AWS CLI, also across a restart) and
EXCHANGE_TOKEN.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urljoin

import jwt
import requests
import websockets
from aiortc import RTCSessionDescription
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from helpers import DEV, p384_pem
from media_peers import (
    Cleanup,
    EventsClient,
    Publisher,
    Subscriber,
    active_session,
    describe,
    forge_signature,
    http,
    participant_events,
    participants_by_id,
    self_signed_token,
    wait_until,
)

STAGES_HEADERS = {
    "X-Stages-Platform": "web",
    "X-Stages-SDK": "onstage-tests/1.0",
    "X-Stages-Session-ID": "session-1",
    "X-Stages-Trace-ID": "trace-1",
    "X-Stages-WHIP-Version": "1",
    "X-Stages-Options": "{}",
}


def claims_of(token: str) -> dict:
    """What a client library reads from a token: the claims, signature unchecked."""
    return jwt.decode(token, options={"verify_signature": False})


class IvsEvents(EventsClient):
    """The events socket opened the way IVS's client libraries open it."""

    def __init__(self, label: str = "events"):
        super().__init__(label)
        self.last_sequence = 0

    async def connect_ivs(self, token: str, error_over_ws: bool = True) -> "IvsEvents":
        c = claims_of(token)
        url = (f"{c['events_url']}?{'error_over_ws=1&' if error_over_ws else ''}"
               f"topic={c['topic']}/publishers&traceid={uuid.uuid4().hex}")
        self.ws = await ws_connect(url, subprotocols=[Subprotocol(token)], open_timeout=10, ping_interval=None)
        self._reader = asyncio.ensure_future(self._read())
        return self

    def sequence_numbers(self) -> list[int]:
        return [s["sequenceNumber"] for s in self.states()]


async def post_sdp(peer, url: str, token: str, extra: dict | None = None) -> requests.Response:
    """POSTs the peer's offer as the client libraries do; applies the answer on 201."""
    await peer.make_offer()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp",
               "X-Stages-Request-ID": uuid.uuid4().hex, **STAGES_HEADERS, **(extra or {})}
    resp = await http("POST", url, data=peer.offer_sdp.encode(), headers=headers)
    peer.response = resp
    if resp.status_code == 201:
        loc = resp.headers.get("Location")
        peer.location = urljoin(url, loc) if loc else None
        await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=resp.text, type="answer"))
    return resp


async def publish_ivs(p: Publisher, token: str) -> requests.Response:
    c = claims_of(token)
    return await post_sdp(p, f"{c['whip_url']}/publish/{c['jti']}", token)


async def subscribe_ivs(s: Subscriber, token: str, publisher_id: str) -> requests.Response:
    c = claims_of(token)
    return await post_sdp(s, f"{c['whip_url']}/subscribe/{publisher_id}", token,
                          {"X-Stages-Initial-Layer-Pref": "highest"})


def test_preflight_allows_the_stages_headers_and_exposes_location_and_link(stage):
    whip = stage["endpoints"]["whip"]
    wanted = ",".join([*STAGES_HEADERS, "X-Stages-Request-ID", "X-Stages-Initial-Layer-Pref",
                       "Authorization", "Content-Type"])
    for path in ("/publish/someone", "/subscribe/someone", ""):
        r = requests.options(f"{whip}{path}", timeout=10, headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": wanted})
        assert r.status_code in (200, 204), describe(r)
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        for h in wanted.split(","):
            assert h.lower() in allowed, f"{h} not allowed by the preflight of {path}: {r.headers}"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "link"} <= exposed, r.headers


def test_publish_subscribe_and_events_in_the_client_library_forms(stage, token_for, ivs, arun):
    tp = token_for(stage, "host", attributes={"role": "host"})
    tv = token_for(stage, "viewer", ("SUBSCRIBE",))
    host, viewer = tp["participantId"], tv["participantId"]

    async def go():
        c = Cleanup()
        try:
            ev = c.add(IvsEvents("viewer"))
            await ev.connect_ivs(tv["token"])
            assert ev.ws.subprotocol == tv["token"]
            first = await ev.wait_state(lambda s: True, 5)
            assert first["sequenceNumber"] == 1, first
            assert participants_by_id(first)[viewer] == {
                "id": viewer, "userId": "viewer", "attributes": {}, "isPublishing": False,
                "audioMuted": False, "videoStopped": False}, first

            # the path's id must be the token's
            wrong = c.add(Publisher("wrong", colour=(10, 10, 10)))
            r = await post_sdp(wrong, f"{stage['endpoints']['whip']}/publish/{viewer}", tp["token"])
            assert r.status_code == 403, describe(r)

            p = c.add(Publisher("host", colour=(30, 200, 60), tone=440.0, video_codec="video/VP8"))
            r = await publish_ivs(p, tp["token"])
            assert r.status_code == 201, describe(r)
            assert r.headers["Content-Type"] == "application/sdp"
            assert p.location and p.location.startswith(stage["endpoints"]["whip"] + "/"), r.headers
            await ev.wait_state(lambda s: participants_by_id(s).get(host, {}).get("isPublishing") is True, 10)

            s = c.add(Subscriber("viewer"))
            r = await subscribe_ivs(s, tv["token"], host)
            assert r.status_code == 201, describe(r)
            await s.wait_video(5, timeout=15)

            r = await p.delete()
            assert r.status_code == 200, describe(r)
            await ev.wait_state(lambda s: host not in participants_by_id(s), 10)
            gone = await http("DELETE", r.request.url)
            assert gone.status_code == 404, describe(gone)

            seq = ev.sequence_numbers()
            assert seq == list(range(1, len(seq) + 1)) and len(seq) >= 3, seq
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_set_state_round_trips_to_every_socket(stage, token_for, arun):
    ta, tb = token_for(stage, "a"), token_for(stage, "b")
    a_id = ta["participantId"]

    async def go():
        c = Cleanup()
        try:
            a = c.add(IvsEvents("a"))
            await a.connect_ivs(ta["token"])
            b = c.add(IvsEvents("b"))
            await b.connect_ivs(tb["token"])
            await a.wait_state(lambda s: len(s["participants"]) == 2, 5)
            await b.wait_state(lambda s: len(s["participants"]) == 2, 5)
            timings = []
            for muted, stopped in ((True, False), (True, True), (False, False)):
                na, nb = len(a.messages), len(b.messages)
                sent = time.monotonic()
                await a.send({"type": "SET_STATE", "audioMuted": muted, "videoStopped": stopped, "version": "0"})
                want = lambda s: (participants_by_id(s)[a_id]["audioMuted"] == muted
                                  and participants_by_id(s)[a_id]["videoStopped"] == stopped)
                await a.wait_state(want, 5, start=na)
                own = time.monotonic() - sent
                await b.wait_state(want, 5, start=nb)
                timings.append((own, time.monotonic() - sent))
            worst = max(t for pair in timings for t in pair)
            print(f"SET_STATE round trip on loopback: {[(round(x * 1000, 1), round(y * 1000, 1)) for x, y in timings]} ms")
            assert worst < 0.5, f"SET_STATE took {worst * 1000:.1f} ms to come back (wanted ~<100 ms)"

            # a bad member is named
            n = len(a.messages)
            await a.send({"type": "SET_STATE", "audioMuted": "yes", "videoStopped": False})
            err = await a.wait_for(lambda m: m.get("type") == "ERROR", 5, start=n)
            assert "audioMuted" in err["message"], err
            for x in (a, b):
                seq = x.sequence_numbers()
                assert all(p < q for p, q in zip(seq, seq[1:])) and seq[0] == 1, seq
        finally:
            await c.close()

    arun(go(), timeout=30)


def test_disconnect_and_stage_deletion_are_announced_before_the_close(stage, token_for, ivs, arun):
    ta, tb = token_for(stage, "leaver"), token_for(stage, "stayer")

    async def go():
        c = Cleanup()
        try:
            a = c.add(IvsEvents("leaver"))
            await a.connect_ivs(ta["token"])
            b = c.add(IvsEvents("stayer"))
            await b.connect_ivs(tb["token"])
            await a.wait_state(lambda s: len(s["participants"]) == 2, 5)
            await asyncio.to_thread(ivs.disconnect_participant, stageArn=stage["arn"],
                                    participantId=ta["participantId"], reason="bye now")
            bye = await a.wait_for(lambda m: m.get("type") == "aws:ivs:DISCONNECT", 5)
            assert bye["reason"] == "PARTICIPANT_DISCONNECTED" and bye["code"] == 4003, bye
            await wait_until(lambda: a.closed_at is not None, 5, what="the leaver's socket to close")
            await asyncio.to_thread(ivs.delete_stage, arn=stage["arn"])
            bye = await b.wait_for(lambda m: m.get("type") == "aws:ivs:DISCONNECT", 5)
            assert bye["reason"] == "STAGE_DELETED" and bye["code"] == 4004, bye
        finally:
            await c.close()

    arun(go(), timeout=30)


def test_refused_tokens_get_join_error_over_the_socket(stage, token_for, ivs, arun):
    other = ivs.create_stage(name="elsewhere")["stage"]
    t = token_for(stage, "someone")
    t_other = token_for(other, "misplaced")

    async def refused_with(token: str, topic: str | None = None) -> dict:
        c = claims_of(token)
        topic = topic or c["topic"]
        url = f"{c['events_url']}?error_over_ws=1&topic={topic}/publishers&traceid=x"
        async with ws_connect(url, subprotocols=[Subprotocol(token)], open_timeout=10, ping_interval=None) as ws:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            try:
                await asyncio.wait_for(ws.recv(), 5)
                raise AssertionError("the socket stayed open after JOIN_ERROR")
            except websockets.ConnectionClosed:
                pass
        return msg

    async def go():
        forged = await refused_with(forge_signature(t["token"]))
        assert forged["type"] == "aws:ivs:JOIN_ERROR" and forged["fatal"] is True, forged
        assert forged["code"] == 401 and forged["message"], forged
        wrong = await refused_with(t_other["token"], topic=stage["arn"].rsplit("/", 1)[1])
        assert wrong["type"] == "aws:ivs:JOIN_ERROR" and wrong["code"] == 401, wrong
        # without error_over_ws the handshake itself is refused, as before
        c = claims_of(t["token"])
        try:
            await ws_connect(f"{c['events_url']}?topic={c['topic']}/publishers",
                             subprotocols=[Subprotocol(forge_signature(t["token"]))], open_timeout=10)
            raise AssertionError("a forged token opened the events socket")
        except websockets.InvalidStatus as e:
            assert e.response.status_code == 401

    try:
        arun(go(), timeout=30)
    finally:
        ivs.delete_stage(arn=other["arn"])


def test_revocation_closes_every_connection_of_the_token_at_once(stage, token_for, ivs, ivs2, arun):
    tr = token_for(stage, "revoked")
    tk = token_for(stage, "kept", ("SUBSCRIBE",))
    rid = tr["participantId"]

    async def go():
        c = Cleanup()
        try:
            keep = c.add(IvsEvents("kept"))
            await keep.connect_ivs(tk["token"])
            ev = c.add(IvsEvents("revoked"))
            await ev.connect_ivs(tr["token"])
            p = c.add(Publisher("revoked", colour=(200, 40, 40), tone=330.0, video_codec="video/VP8"))
            assert (await publish_ivs(p, tr["token"])).status_code == 201
            await keep.wait_state(lambda s: participants_by_id(s).get(rid, {}).get("isPublishing") is True, 10)
            s = c.add(Subscriber("kept"))
            assert (await subscribe_ivs(s, tk["token"], rid)).status_code == 201
            await s.wait_video(3, timeout=15)
            session = active_session(ivs, stage["arn"])

            # another account revoking the same id changes nothing
            await asyncio.to_thread(ivs2.revoke_connection_token, tokenId=rid)
            await asyncio.sleep(0.3)
            assert ev.closed_at is None

            n = len(keep.messages)
            t0 = time.monotonic()
            resp = await asyncio.to_thread(ivs.revoke_connection_token, tokenId=rid)
            assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
            bye = await ev.wait_for(lambda m: m.get("type") == "aws:ivs:DISCONNECT", 1.0)
            assert bye["reason"] == "TOKEN_REVOKED", bye
            await keep.wait_state(lambda st: rid not in participants_by_id(st), 1.0, start=n)
            took = time.monotonic() - t0
            print(f"revocation to closed connections: {took * 1000:.1f} ms")
            assert took < 1.0

            # the token is refused from now on; the other participant is untouched
            again = c.add(Publisher("again", colour=(1, 2, 3)))
            r = await publish_ivs(again, tr["token"])
            assert r.status_code == 403, describe(r)
            assert keep.closed_at is None
            names = [e["name"] for e in participant_events(ivs, stage["arn"], session, rid)]
            assert "LEFT" in names and "PUBLISH_STOPPED" in names, names
            # unknown ids succeed too (no ResourceNotFound in the model)
            ivs.revoke_connection_token(tokenId="never-issued")
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_revoking_a_self_signed_token_spares_a_later_one_with_the_same_id(fresh_account, arun):
    ivs = fresh_account.client
    stage = ivs.create_stage(name="revoke-self-signed")["stage"]
    key, pem = p384_pem()
    key_arn = ivs.import_public_key(publicKeyMaterial=pem, name="revoke")["publicKey"]["arn"]
    jti = f"reused-{uuid.uuid4().hex[:8]}"
    old = self_signed_token(key, key_arn, stage, jti=jti, user_id="u")

    async def go():
        c = Cleanup()
        try:
            ev = c.add(IvsEvents("old"))
            await ev.connect_ivs(old)
            await ev.wait_state(lambda s: True, 5)
            await asyncio.to_thread(ivs.revoke_connection_token, tokenId=jti)
            await ev.wait_for(lambda m: m.get("type") == "aws:ivs:DISCONNECT", 1.0)
            refused = c.add(IvsEvents("old again"))
            await refused.connect_ivs(old)
            err = await refused.wait_for(lambda m: m.get("type") == "aws:ivs:JOIN_ERROR", 5)
            assert err["code"] == 403, err
            # issued after the revocation (iat a few seconds on): not affected
            newer = self_signed_token(key, key_arn, stage, jti=jti, user_id="u", iat_offset=3)
            ok = c.add(IvsEvents("newer"))
            await ok.connect_ivs(newer)
            await ok.wait_state(lambda s: jti in participants_by_id(s), 5)
        finally:
            await c.close()

    arun(go(), timeout=30)


def current_cli_model(root) -> "Path":
    """A data path giving the AWS CLI botocore's current ivs-realtime model: the CLI
    vendors an older copy of the model, from before RevokeConnectionToken."""
    import botocore
    src = Path(botocore.__file__).parent / "data" / "ivs-realtime" / "2020-07-14" / "service-2.json.gz"
    dst = Path(root) / "models" / "ivs-realtime" / "2020-07-14"
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "service-2.json").write_bytes(gzip.decompress(src.read_bytes()))
    return Path(root) / "models"


def test_revocation_from_the_cli_survives_a_restart(server_factory, aws_cli, tmp_path, arun):
    srv = server_factory()
    ivs = srv.client(DEV)
    stage = ivs.create_stage(name="revoke-restart")["stage"]
    token = ivs.create_participant_token(stageArn=stage["arn"], userId="x")["participantToken"]
    env = {"AWS_ACCESS_KEY_ID": DEV.access_key, "AWS_SECRET_ACCESS_KEY": DEV.secret_key,
           "AWS_DEFAULT_REGION": "us-east-1", "PATH": "/usr/bin:/bin",
           "AWS_DATA_PATH": str(current_cli_model(tmp_path))}
    out = subprocess.run([str(aws_cli), "ivs-realtime", "revoke-connection-token", "--endpoint-url", srv.url,
                          "--token-id", token["participantId"]], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    srv.restart()

    async def go():
        ev = IvsEvents("after restart")
        try:
            await ev.connect_ivs(token["token"])
            err = await ev.wait_for(lambda m: m.get("type") == "aws:ivs:JOIN_ERROR", 5)
            assert err["code"] == 403 and "revoked" in err["message"], err
        finally:
            await ev.close()

    arun(go(), timeout=30)


def test_exchange_token_changes_attributes_and_drops_publish(fresh_account, arun):
    ivs = fresh_account.client
    stage = ivs.create_stage(name="exchange")["stage"]
    key, pem = p384_pem()
    key_arn = ivs.import_public_key(publicKeyMaterial=pem, name="exchange")["publicKey"]["arn"]
    jti = f"ex-{uuid.uuid4().hex[:8]}"
    first = self_signed_token(key, key_arn, stage, jti=jti, user_id="u", overrides={"attributes": {"seat": "a"}})
    second = self_signed_token(key, key_arn, stage, jti=jti, user_id="u", capabilities=("SUBSCRIBE",),
                               overrides={"attributes": {"seat": "b"}})
    moved = self_signed_token(key, key_arn, stage, jti=jti, user_id="u", overrides={"topic": "elsewhere"})
    server_token = ivs.create_participant_token(stageArn=stage["arn"], userId="u")["participantToken"]["token"]

    async def go():
        c = Cleanup()
        try:
            ev = c.add(IvsEvents("exchanger"))
            await ev.connect_ivs(first)
            p = c.add(Publisher("exchanger", colour=(9, 99, 199), video_codec="video/VP8"))
            assert (await publish_ivs(p, first)).status_code == 201
            await ev.wait_state(lambda s: participants_by_id(s).get(jti, {}).get("isPublishing") is True, 10)
            session = active_session(ivs, stage["arn"])

            for bad in (server_token, moved, "not-a-token"):
                n = len(ev.messages)
                await ev.send({"type": "EXCHANGE_TOKEN", "token": bad})
                err = await ev.wait_for(lambda m: m.get("type") in ("aws:ivs:EXCHANGE_TOKEN_ERROR", "ERROR"), 5,
                                        start=n)
                assert err["message"], err

            n = len(ev.messages)
            await ev.send({"type": "EXCHANGE_TOKEN", "token": second})
            await ev.wait_for(lambda m: m.get("type") == "TOKEN_EXCHANGED", 5, start=n)
            st = await ev.wait_state(lambda s: participants_by_id(s).get(jti, {}).get("isPublishing") is False, 5,
                                     start=n)
            assert participants_by_id(st)[jti]["attributes"] == {"seat": "b"}, st
            assert ev.closed_at is None
            names = [e["name"] for e in participant_events(ivs, stage["arn"], session, jti)]
            assert "TOKEN_EXCHANGED" in names and "PUBLISH_STOPPED" in names, names
            record = ivs.get_participant(stageArn=stage["arn"], sessionId=session, participantId=jti)["participant"]
            assert record["attributes"] == {"seat": "b"}, record
        finally:
            await c.close()

    arun(go(), timeout=60)
