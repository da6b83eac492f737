"""Connections onstage must refuse (BEHAVIOUR §3–§4): HTTP status, a plain-text reason,
and the error event with its errorCode in ListParticipantEvents.

A witness participant holds the events socket throughout, so the stage has an active
session in which refusals are recorded.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import jwt
import pytest
import requests

from helpers import p384_pem
from media_peers import (
    Cleanup,
    EventsClient,
    Publisher,
    Subscriber,
    active_session,
    describe,
    events_refusal,
    forge_signature,
    error_event,
    participant_events,
    participants_by_id,
    self_signed_token,
)


# A refused token (401) is recorded as JOIN_ERROR; the model has no code for a bad
# token, so onstage records INVALID_INPUT (the token is the participant's input).
TOKEN_ERROR_CODE = "INVALID_INPUT"


def no_events(ivs, stage_arn: str, session_id: str, participant_id: str) -> list:
    """The events recorded for `participant_id`; [] when it has none (or no record)."""
    try:
        return participant_events(ivs, stage_arn, session_id, participant_id)
    except ivs.exceptions.ResourceNotFoundException:
        return []


def forged_count(server) -> float:
    for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("onstage_participant_tokens_forged_total"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def jwt_id(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["jti"]


def stage_id_of(stage: dict) -> str:
    return stage["arn"].rsplit("/", 1)[1]


async def open_witness(stage: dict, token: dict, c: Cleanup) -> EventsClient:
    """A participant holding the events socket (so the stage has an active session)."""
    ev = c.add(EventsClient("witness"))
    await ev.connect(stage["endpoints"]["events"], stage_id_of(stage), token["token"])
    await ev.wait_state(lambda st: token["participantId"] in participants_by_id(st), 5,
                        what="the witness in STAGE_STATE")
    return ev


def assert_refused(resp, status: int) -> None:
    assert resp.status_code == status, describe(resp)
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.split(";")[0].strip() == "text/plain", f"refusal is not plain text: {describe(resp)}"
    assert resp.text.strip(), f"refusal without a reason: {describe(resp)}"
    assert "Location" not in resp.headers, describe(resp)


def audio_publisher(label: str) -> Publisher:
    return Publisher(label, tone=440.0)


# ---------------------------------------------------------------------------------------------------
# Tokens


def test_malformed_and_missing_tokens_are_refused_401(stage, token_for, arun):
    whip = stage["endpoints"]["whip"]

    async def go():
        c = Cleanup()
        try:
            for label, header in (("garbage", "Bearer not-a-jwt"), ("missing", None),
                                  ("empty", "Bearer "), ("wrong scheme", "Basic dXNlcjpwYXNz")):
                p = c.add(audio_publisher(f"publisher with {label} token"))
                offer = await p.pc.createOffer()
                await p.pc.setLocalDescription(offer)
                headers = {"Content-Type": "application/sdp"}
                if header is not None:
                    headers["Authorization"] = header
                resp = await asyncio.to_thread(requests.post, whip, data=p.pc.localDescription.sdp.encode(),
                                               headers=headers, timeout=10)
                assert_refused(resp, 401)
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_forged_signature_is_refused_401_and_not_recorded(stage, token_for, ivs, server, arun):
    whip, events_url = stage["endpoints"]["whip"], stage["endpoints"]["events"]
    witness = token_for(stage, "witness")
    real = token_for(stage, "forger", ("PUBLISH", "SUBSCRIBE"))
    forged = forge_signature(real["token"])
    assert forged != real["token"]

    async def go():
        c = Cleanup()
        try:
            await open_witness(stage, witness, c)
            sid = active_session(ivs, stage["arn"])
            forged_before = forged_count(server)
            p = c.add(audio_publisher("forged publisher"))
            assert_refused(await p.publish(whip, forged), 401)
            assert await events_refusal(events_url, stage_id_of(stage), forged) == 401
            # A forgery names whoever it likes: nothing is written under the real
            # participant's id (DECISIONS), it is only counted. The refusal is answered
            # after anything it would write, so there is nothing to wait for.
            assert no_events(ivs, stage["arn"], sid, real["participantId"]) == []
            assert forged_count(server) - forged_before == 2
            # the unaltered token works: the refusal was the signature's doing
            p2 = c.add(audio_publisher("genuine publisher"))
            resp = await p2.publish(whip, real["token"])
            assert resp.status_code == 201, describe(resp)
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_self_signed_tokens_expired_wrong_stage_deleted_key(fresh_account, server, arun):
    """Self-signed ES384 tokens (imported P-384 key, kid = key ARN, version "1.0"):
    a valid one publishes; expired, wrong-stage and deleted-key ones get 401."""
    ivs = fresh_account.client
    stage = ivs.create_stage(name="self-signed")["stage"]
    other = ivs.create_stage(name="other")["stage"]
    whip, events_url = stage["endpoints"]["whip"], stage["endpoints"]["events"]
    key, pem = p384_pem()
    key_arn = ivs.import_public_key(publicKeyMaterial=pem, name="media-test")["publicKey"]["arn"]
    witness = ivs.create_participant_token(stageArn=stage["arn"], userId="witness")["participantToken"]
    jti = lambda tag: f"{tag}-{uuid.uuid4().hex[:12]}"

    valid = self_signed_token(key, key_arn, stage, jti=jti("valid"), capabilities=("PUBLISH",), user_id="signed")
    expired = self_signed_token(key, key_arn, stage, jti=jti("expired"), iat_offset=-7200, exp_in=-3600)
    # signed for `other`, presented to `stage`'s events socket; and claims that mix two stages
    for_other = self_signed_token(key, key_arn, other, jti=jti("other"))
    mixed = self_signed_token(key, key_arn, stage, jti=jti("mixed"),
                              overrides={"topic": other["arn"].rsplit("/", 1)[1]})
    doomed_a = self_signed_token(key, key_arn, stage, jti=jti("doomed-a"))
    doomed_b = self_signed_token(key, key_arn, stage, jti=jti("doomed-b"))

    async def go():
        c = Cleanup()
        try:
            await open_witness(stage, witness, c)
            sid = active_session(ivs, stage["arn"])
            assert sid, "no active session while the witness holds the events socket"
            ok = c.add(audio_publisher("self-signed publisher"))
            resp = await ok.publish(whip, valid)
            assert resp.status_code == 201, describe(resp)
            await ok.wait_connected()

            p = c.add(audio_publisher("expired publisher"))
            assert_refused(await p.publish(whip, expired), 401)
            await error_event(ivs, stage["arn"], sid, jwt_id(expired), "JOIN_ERROR", TOKEN_ERROR_CODE)
            assert await events_refusal(events_url, stage_id_of(stage), expired) == 401

            p = c.add(audio_publisher("mixed-stage publisher"))
            assert_refused(await p.publish(whip, mixed), 401)
            await error_event(ivs, stage["arn"], sid, jwt_id(mixed), "JOIN_ERROR", TOKEN_ERROR_CODE)
            assert await events_refusal(events_url, stage_id_of(stage), for_other) == 401

            # the key works until it is deleted
            assert await events_refusal(events_url, stage_id_of(stage), doomed_a) is None
            await asyncio.to_thread(ivs.delete_public_key, arn=key_arn)
            p = c.add(audio_publisher("deleted-key publisher"))
            assert_refused(await p.publish(whip, doomed_b), 401)
            # signed with a key onstage no longer holds: its signature cannot be
            # verified, so it is treated as a forgery and not recorded
            assert no_events(ivs, stage["arn"], sid, jwt_id(doomed_b)) == []
            assert await events_refusal(events_url, stage_id_of(stage), doomed_a) == 401
        finally:
            await c.close()
            for arn in (stage["arn"], other["arn"]):
                try:
                    ivs.delete_stage(arn=arn)
                except Exception:
                    pass

    arun(go(), timeout=60)


def test_wrong_stage_server_token_is_refused_on_the_events_socket(stage, ivs, token_for, arun):
    other = ivs.create_stage(name="other-stage")["stage"]
    witness = token_for(stage, "witness")
    try:
        t_other = token_for(other, "stranger")

        async def go():
            c = Cleanup()
            try:
                await open_witness(stage, witness, c)
                sid = active_session(ivs, stage["arn"])
                status = await events_refusal(stage["endpoints"]["events"], stage_id_of(stage), t_other["token"])
                assert status == 401, f"a token of {other['arn']} at {stage['arn']}'s events socket: {status}"
                await error_event(ivs, stage["arn"], sid, t_other["participantId"], "JOIN_ERROR", TOKEN_ERROR_CODE)
            finally:
                await c.close()

        arun(go(), timeout=30)
    finally:
        ivs.delete_stage(arn=other["arn"])


# ---------------------------------------------------------------------------------------------------
# Capabilities, missing publishers, quota, codecs


def test_capabilities_are_enforced_403(stage, token_for, ivs, arun):
    whip = stage["endpoints"]["whip"]
    arn = stage["arn"]
    witness = token_for(stage, "witness")
    sub_only = token_for(stage, "sub-only", ("SUBSCRIBE",))
    pub_only = token_for(stage, "pub-only", ("PUBLISH",))
    nothing = token_for(stage, "nothing", ())

    async def go():
        c = Cleanup()
        try:
            await open_witness(stage, witness, c)
            sid = active_session(ivs, arn)
            assert sid, "no active session while the witness holds the events socket"
            # a publisher to subscribe to
            pub = c.add(audio_publisher("publisher"))
            assert (await pub.publish(whip, pub_only["token"])).status_code == 201
            await pub.wait_connected()

            p = c.add(audio_publisher("subscribe-only token publishing"))
            assert_refused(await p.publish(whip, sub_only["token"]), 403)
            await error_event(ivs, arn, sid, sub_only["participantId"], "PUBLISH_ERROR", "INSUFFICIENT_CAPABILITIES")

            s = c.add(Subscriber("publish-only token subscribing"))
            assert_refused(await s.subscribe(whip, pub_only["participantId"], pub_only["token"]), 403)
            await error_event(ivs, arn, sid, pub_only["participantId"], "SUBSCRIBE_ERROR", "INSUFFICIENT_CAPABILITIES")

            p = c.add(audio_publisher("capability-less token publishing"))
            assert_refused(await p.publish(whip, nothing["token"]), 403)
            await error_event(ivs, arn, sid, nothing["participantId"], "PUBLISH_ERROR", "INSUFFICIENT_CAPABILITIES")
            # capabilities [] may still hold the events socket
            assert await events_refusal(stage["endpoints"]["events"], stage_id_of(stage), nothing["token"]) is None
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_subscribing_to_someone_not_publishing_is_404(stage, token_for, ivs, arun):
    """404 PUBLISHER_NOT_FOUND, for a connected participant that does not publish and
    for an id nobody has; the SUBSCRIBE_ERROR names the publisher asked for
    (remoteParticipantId: "for a subscribe event, this is the publisher")."""
    whip = stage["endpoints"]["whip"]
    arn = stage["arn"]
    witness = token_for(stage, "witness")
    targets = [(witness["participantId"], token_for(stage, "viewer-1", ("SUBSCRIBE",))),
               ("AAAAAAAAAAAA", token_for(stage, "viewer-2", ("SUBSCRIBE",)))]

    async def go():
        c = Cleanup()
        try:
            await open_witness(stage, witness, c)
            sid = active_session(ivs, arn)
            for target, viewer in targets:
                s = c.add(Subscriber(f"subscriber of {target}"))
                assert_refused(await s.subscribe(whip, target, viewer["token"]), 404)
            for target, viewer in targets:
                ev = await error_event(ivs, arn, sid, viewer["participantId"], "SUBSCRIBE_ERROR", "PUBLISHER_NOT_FOUND")
                assert ev.get("remoteParticipantId") == target, ev
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_thirteenth_publisher_is_refused_quota_exceeded(stage, token_for, ivs, arun):
    whip = stage["endpoints"]["whip"]
    arn = stage["arn"]
    witness = token_for(stage, "witness")
    tokens = [token_for(stage, f"publisher-{i}", ("PUBLISH",)) for i in range(13)]

    async def go():
        c = Cleanup()
        try:
            ev = await open_witness(stage, witness, c)
            sid = active_session(ivs, arn)
            pubs = []
            for i, t in enumerate(tokens[:12]):
                p = c.add(audio_publisher(f"publisher {i + 1}"))
                resp = await p.publish(whip, t["token"])
                assert resp.status_code == 201, f"publisher {i + 1} of 12: {describe(resp)}"
                pubs.append(p)
            await asyncio.gather(*(p.wait_connected(15) for p in pubs))
            await ev.wait_state(lambda st: sum(p["isPublishing"] for p in st["participants"]) == 12, 10,
                                what="12 publishers in STAGE_STATE")

            p13 = c.add(audio_publisher("publisher 13"))
            assert_refused(await p13.publish(whip, tokens[12]["token"]), 403)
            await error_event(ivs, arn, sid, tokens[12]["participantId"], "PUBLISH_ERROR", "QUOTA_EXCEEDED")

            # a concurrent quota: once one leaves, the 13th gets in
            gone = tokens[0]["participantId"]
            mark = len(ev.messages)
            r = await pubs[0].delete()
            assert r is not None and 200 <= r.status_code < 300, describe(r)
            await ev.wait_state(lambda st: not participants_by_id(st).get(gone, {}).get("isPublishing"), 5, start=mark,
                                what="STAGE_STATE without the first publisher publishing")
            p13b = c.add(audio_publisher("publisher 13, again"))
            resp = await p13b.publish(whip, tokens[12]["token"])
            assert resp.status_code == 201, describe(resp)
        finally:
            await c.close()

    arun(go(), timeout=90)


def _rename_codec(sdp: str, kind: str, old: str, new: str) -> str:
    """Renames codec `old` to `new` in the m=<kind> section's rtpmap lines."""
    out, in_kind = [], False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            in_kind = line.startswith(f"m={kind} ")
        if in_kind and line.startswith("a=rtpmap:"):
            line = re.sub(rf" {old}/", f" {new}/", line, flags=re.I)
        out.append(line)
    return "\r\n".join(out)


def _h264_high_profile(sdp: str) -> str:
    return re.sub(r"profile-level-id=42[0-9a-fA-F]{4}", "profile-level-id=640c1f", sdp)


@pytest.mark.parametrize("case", ["video VP9 only", "video H.264 High only", "audio PCMU only"])
def test_offer_without_acceptable_codec_is_refused(stage, token_for, ivs, arun, case):
    whip = stage["endpoints"]["whip"]
    arn = stage["arn"]
    witness = token_for(stage, "witness")
    tp = token_for(stage, "publisher", ("PUBLISH",))

    async def go():
        c = Cleanup()
        try:
            await open_witness(stage, witness, c)
            sid = active_session(ivs, arn)
            if case == "video VP9 only":
                p = c.add(Publisher(case, colour=(1, 2, 3), video_codec="video/VP8"))
                munge, code = (lambda s: _rename_codec(s, "video", "VP8", "VP9")), "INVALID_VIDEO_CODEC"
            elif case == "video H.264 High only":
                p = c.add(Publisher(case, colour=(1, 2, 3), video_codec="video/H264"))
                munge, code = _h264_high_profile, "INVALID_VIDEO_CODEC"
            else:
                p = c.add(Publisher(case, tone=440.0, audio_codec="audio/PCMU"))
                munge, code = None, "INVALID_AUDIO_CODEC"
            resp = await p.publish(whip, tp["token"], munge=munge)
            assert_refused(resp, 400)
            assert "codec" in resp.text.lower(), f"the reason does not name the codec problem: {describe(resp)}"
            await error_event(ivs, arn, sid, tp["participantId"], "PUBLISH_ERROR", code)
        finally:
            await c.close()

    arun(go(), timeout=60)
