"""aiortc publishers → onstage → aiortc subscribers, with real encoding and decoding.

Each publisher draws its own solid colour and plays its own tone; a subscriber proves
it receives *that* publisher by the mean colour of the frames it decodes and the
dominant frequency of the audio it decodes.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from media_peers import (
    Cleanup,
    EventsClient,
    LossyVideoLink,
    Publisher,
    Subscriber,
    active_session,
    colour_distance,
    describe,
    first_media_codec,
    participant_events,
    participants_by_id,
    sdp_fmtp,
)

RED, BLUE, GREEN = (210, 40, 40), (40, 60, 210), (40, 190, 60)
COLOUR_TOLERANCE = 30  # per channel, after encode → SFU → decode
TONE_TOLERANCE_HZ = 15


def assert_answer(resp, kind_codec: str | None = None) -> None:
    assert resp.status_code == 201, describe(resp)
    assert resp.headers.get("Content-Type", "").split(";")[0].strip() == "application/sdp", describe(resp)
    assert resp.headers.get("Location"), f"201 without Location: {describe(resp)}"
    assert resp.text.startswith("v=0"), describe(resp)
    if kind_codec is not None:
        got = first_media_codec(resp.text, "video")
        assert got is not None and got.upper() == kind_codec.upper(), (
            f"answer negotiated video {got!r}, wanted {kind_codec}: {resp.text}")
        if kind_codec.upper() == "H264":
            fmtps = " ".join(sdp_fmtp(resp.text, "video").values())
            assert "packetization-mode=1" in fmtps, f"H.264 answer without packetization-mode=1: {resp.text}"


async def wait_publishing(events: EventsClient, pid: str, timeout: float = 10.0) -> dict:
    return await events.wait_state(
        lambda st: participants_by_id(st).get(pid, {}).get("isPublishing") is True,
        timeout, what=f"STAGE_STATE with {pid} publishing")


def assert_identity(sub: Subscriber, colour, other_colour, tone: float) -> None:
    v, a = sub.video, sub.audio
    mean = v.mean_colour(last=10)
    assert mean is not None, f"{sub.label}: no decoded frame was sampled"
    assert colour_distance(mean, colour) <= COLOUR_TOLERANCE, (
        f"{sub.label}: decoded mean colour {mean.round(1).tolist()} is not the publisher's {colour}")
    assert colour_distance(mean, other_colour) > 100, f"{sub.label}: looks like the other publisher {other_colour}"
    assert v.sizes == {(320, 240)}, f"{sub.label}: decoded frame sizes {v.sizes}"
    f = a.dominant_frequency()
    assert f is not None and abs(f - tone) <= TONE_TOLERANCE_HZ, (
        f"{sub.label}: decoded audio peaks at {f} Hz, the publisher plays {tone} Hz (rms {a.rms():.0f})")


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_subscriber_decodes_the_publisher_it_subscribed_to(stage, token_for, arun, codec):
    """Two publishers (red 440 Hz, blue 1000 Hz) forced to one codec; one viewer token
    subscribes to each: each subscription decodes that publisher's colour and tone."""
    whip, events_url = stage["endpoints"]["whip"], stage["endpoints"]["events"]
    stage_id = stage["arn"].rsplit("/", 1)[1]
    ta = token_for(stage, "publisher-a", ("PUBLISH",))
    tb = token_for(stage, "publisher-b", ("PUBLISH",))
    tv = token_for(stage, "viewer", ("SUBSCRIBE",))

    async def go():
        c = Cleanup()
        try:
            ev = c.add(EventsClient("viewer events"))
            await ev.connect(events_url, stage_id, tv["token"])
            pa = c.add(Publisher("publisher A", colour=RED, tone=440.0, video_codec=f"video/{codec}"))
            pb = c.add(Publisher("publisher B", colour=BLUE, tone=1000.0, video_codec=f"video/{codec}"))
            for p, t in ((pa, ta), (pb, tb)):
                resp = await p.publish(whip, t["token"])
                assert_answer(resp, codec)
            await asyncio.gather(pa.wait_connected(), pb.wait_connected())
            await wait_publishing(ev, ta["participantId"])
            await wait_publishing(ev, tb["participantId"])

            sa = c.add(Subscriber("subscriber of A"))
            sb = c.add(Subscriber("subscriber of B"))
            for s, t in ((sa, ta), (sb, tb)):
                resp = await s.subscribe(whip, t["participantId"], tv["token"])
                assert_answer(resp, codec)
            await asyncio.gather(sa.wait_connected(), sb.wait_connected())
            for s in (sa, sb):
                await s.wait_video(30, timeout=10)
                await s.wait_audio(50, timeout=10)
            assert_identity(sa, RED, BLUE, 440.0)
            assert_identity(sb, BLUE, RED, 1000.0)
        finally:
            await c.close()

    arun(go(), timeout=60)


async def _publish_red_then_blue(stage, tp, tv, c: Cleanup, before_replacement=None):
    whip, events_url = stage["endpoints"]["whip"], stage["endpoints"]["events"]
    stage_id = stage["arn"].rsplit("/", 1)[1]
    pid = tp["participantId"]
    ev = c.add(EventsClient("viewer events"))
    await ev.connect(events_url, stage_id, tv["token"])
    p1 = c.add(Publisher("first publish (red)", colour=RED, tone=440.0, video_codec="video/VP8"))
    assert_answer(await p1.publish(whip, tp["token"]), "VP8")
    await p1.wait_connected()
    await wait_publishing(ev, pid)
    extra = await before_replacement() if before_replacement else None

    mark = len(ev.messages)
    p2 = c.add(Publisher("second publish (blue)", colour=BLUE, tone=1000.0, video_codec="video/VP8"))
    t_replace = time.monotonic()
    assert_answer(await p2.publish(whip, tp["token"]), "VP8")
    await p2.wait_connected()
    await asyncio.sleep(0.5)
    after = [m["payload"] for _, m in ev.messages[mark:] if m.get("type") == "STAGE_STATE"]
    for st in after:
        entries = [p for p in st["participants"] if p["id"] == pid]
        assert len(entries) == 1 and entries[0]["isPublishing"] is True, (
            f"during/after the replacement a STAGE_STATE shows {entries} for {pid}: {st}")
    last = ev.states()[-1]
    entries = [p for p in last["participants"] if p["id"] == pid]
    assert len(entries) == 1 and entries[0]["isPublishing"] is True, f"last STAGE_STATE: {last}"
    assert sum(1 for p in last["participants"] if p["isPublishing"]) == 1, f"last STAGE_STATE: {last}"
    return p1, p2, t_replace, extra


async def assert_replaced_connection_closed(p1: Publisher, p2: Publisher, t_replace: float) -> None:
    """The old publish connection is closed by the server (DTLS close_notify), so the
    old client learns at once that it was replaced; the new one stays up."""
    ended = await p1.wait_ended(max(0.1, t_replace + 5.0 - time.monotonic()))
    assert ended, (f"the replaced publish connection is still {p1.pc.connectionState!r} 5 s after the second "
                   f"publish with the same token; states {p1.state_names()}")
    assert p2.pc.connectionState == "connected", f"second publish: {p2.state_names()}"


def test_second_publish_with_same_token_replaces_the_first(stage, token_for, ivs, arun):
    """The second publish replaces the first at once: the old connection is closed,
    the participant never leaves (events: PUBLISH_STOPPED then PUBLISH_STARTED, no
    LEFT), and subscribers get the new publish."""
    whip = stage["endpoints"]["whip"]
    tp = token_for(stage, "presenter", ("PUBLISH",))
    tv = token_for(stage, "viewer", ("SUBSCRIBE",))

    async def go():
        c = Cleanup()
        try:
            p1, p2, t_replace, _ = await _publish_red_then_blue(stage, tp, tv, c)
            s = c.add(Subscriber("subscriber after the replacement"))
            assert_answer(await s.subscribe(whip, tp["participantId"], tv["token"]))
            await s.wait_connected()
            await s.wait_video(30, timeout=10)
            await s.wait_audio(50, timeout=10)
            assert_identity(s, BLUE, RED, 1000.0)
            await assert_replaced_connection_closed(p1, p2, t_replace)
            sid = active_session(ivs, stage["arn"])
            names = [e["name"] for e in participant_events(ivs, stage["arn"], sid, tp["participantId"])]
            assert names == ["PUBLISH_STARTED", "PUBLISH_STOPPED", "PUBLISH_STARTED", "JOINED"], names
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_subscriber_connected_before_a_replacement_follows_the_new_publish(stage, token_for, arun):
    """onstage's media plane keeps a publishing slot per participant: the new publish
    feeds the same slot, so a subscriber that was already watching switches to it."""
    whip = stage["endpoints"]["whip"]
    tp = token_for(stage, "presenter", ("PUBLISH",))
    tv = token_for(stage, "viewer", ("SUBSCRIBE",))

    async def go():
        c = Cleanup()
        try:
            async def subscribe_early():
                s = c.add(Subscriber("subscriber before the replacement"))
                assert_answer(await s.subscribe(whip, tp["participantId"], tv["token"]))
                await s.wait_connected()
                await s.wait_video(15, timeout=10)
                assert colour_distance(s.video.mean_colour(last=5), RED) <= COLOUR_TOLERANCE
                return s

            p1, p2, t_replace, s = await _publish_red_then_blue(stage, tp, tv, c, subscribe_early)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                mean = s.video.mean_colour(since=t_replace, last=5)
                if mean is not None and colour_distance(mean, BLUE) <= COLOUR_TOLERANCE:
                    break
                await asyncio.sleep(0.1)
            mean = s.video.mean_colour(since=t_replace, last=5)
            assert mean is not None and colour_distance(mean, BLUE) <= COLOUR_TOLERANCE, (
                f"8 s after the replacement the early subscriber decodes {None if mean is None else mean.round(1).tolist()}"
                f" ({s.video.frames_after(t_replace)} frames since), not the new publish's {BLUE}; "
                f"subscriber states {s.state_names()}")
            assert s.pc.connectionState == "connected", s.state_names()
            await assert_replaced_connection_closed(p1, p2, t_replace)
        finally:
            await c.close()

    arun(go(), timeout=60)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_late_subscribers_get_a_keyframe(stage, token_for, arun, codec):
    """aiortc's encoders make a keyframe only at the start and when asked (PLI/FIR):
    subscribers arriving 3 s into a publish decode only once onstage gets them a
    keyframe from the publisher (its own PLI on subscribe, or theirs passed on). Two
    arrive together (one rate-limited request may serve both)."""
    whip = stage["endpoints"]["whip"]
    tp = token_for(stage, "presenter", ("PUBLISH",))
    viewers = [token_for(stage, f"late-viewer-{i}", ("SUBSCRIBE",)) for i in range(2)]

    async def go():
        c = Cleanup()
        try:
            p = c.add(Publisher("publisher", colour=GREEN, tone=440.0, video_codec=f"video/{codec}"))
            assert_answer(await p.publish(whip, tp["token"]), codec)
            await p.wait_connected()
            await asyncio.sleep(3.0)
            subs = [c.add(Subscriber(f"late subscriber {i}")) for i in range(len(viewers))]
            resps = await asyncio.gather(*(s.subscribe(whip, tp["participantId"], v["token"])
                                           for s, v in zip(subs, viewers)))
            for r in resps:
                assert_answer(r, codec)
            for s in subs:
                # Decoding at all proves a keyframe was asked for and passed on (the
                # encoder makes none unasked); how soon is the virtual-time tests' business.
                await s.wait_video(1, timeout=15)
                assert colour_distance(s.video.mean_colour(last=3), GREEN) <= COLOUR_TOLERANCE
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_lost_packets_are_retransmitted_to_the_subscriber(stage, token_for, arun):
    """Every 12th video packet to the subscriber is lost on the way; its NACKs are
    answered from onstage's retransmission buffer, so every lost packet arrives after
    all and the video does not stall."""
    whip = stage["endpoints"]["whip"]
    tp = token_for(stage, "presenter", ("PUBLISH",))
    tv = token_for(stage, "viewer", ("SUBSCRIBE",))

    async def go():
        c = Cleanup()
        try:
            p = c.add(Publisher("publisher", colour=GREEN, tone=440.0, video_codec="video/VP8"))
            assert_answer(await p.publish(whip, tp["token"]), "VP8")
            await p.wait_connected()
            s = c.add(Subscriber("subscriber on a lossy link"))
            await s.make_offer()
            link = LossyVideoLink(s, every=12)
            resp = await s.post_offer(f"{whip}/subscribe/{tp['participantId']}", tv["token"])
            assert_answer(resp, "VP8")
            link.start(resp.text)
            await s.wait_video(1, timeout=5)
            await asyncio.sleep(4.0)
            link.stop()
            await asyncio.sleep(0.5)
            assert len(link.dropped) >= 5, f"only {len(link.dropped)} packets dropped of {link.seen}"
            assert not link.unrecovered(), (
                f"{len(link.unrecovered())} of {len(link.dropped)} lost video packets never came back "
                f"(seqs {link.unrecovered()[:10]}); {link.rtx_packets} RTX packets arrived; RTX PT in the "
                f"answer: {link.rtx_pt}")
            # The video goes on after the losses (a stall would stop decoding); how
            # many frames a loaded machine decodes per second is not this test's business.
            await s.wait_video(s.video.count + 10, timeout=15)
        finally:
            await c.close()

    arun(go(), timeout=60)


TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def _offer_transport_cc(sdp: str) -> str:
    """Offers transport-wide congestion control on every media line, as browsers do
    (aiortc does not): id 14, which nothing else in aiortc's offer uses."""
    lines = sdp.split("\r\n")
    out = []
    for line in lines:
        out.append(line)
        if line.startswith("a=mid:"):
            out.append(f"a=extmap:14 {TRANSPORT_CC}")
    return "\r\n".join(out)


def test_transport_cc_is_kept_for_publishers_and_left_out_for_subscribers(stage, token_for, arun):
    """The publisher's sender paces itself by our transport-cc feedback, so its answer
    keeps the extension; onstage estimates no subscriber's bandwidth, so a subscriber's
    answer leaves it out (it would cost the connection a record of every packet sent)
    and the subscription still decodes its publisher."""
    whip = stage["endpoints"]["whip"]
    tp = token_for(stage, "presenter", ("PUBLISH",))
    tv = token_for(stage, "viewer", ("SUBSCRIBE",))

    async def go():
        c = Cleanup()
        try:
            p = c.add(Publisher("publisher offering transport-cc", colour=GREEN, tone=440.0, video_codec="video/VP8"))
            assert_answer(await p.publish(whip, tp["token"], munge=_offer_transport_cc), "VP8")
            assert TRANSPORT_CC in p.answer_sdp, f"publish answer without transport-cc: {p.answer_sdp}"
            await p.wait_connected()
            s = c.add(Subscriber("subscriber offering transport-cc"))
            assert_answer(await s.subscribe(whip, tp["participantId"], tv["token"], munge=_offer_transport_cc))
            assert TRANSPORT_CC not in s.answer_sdp, f"subscribe answer with transport-cc: {s.answer_sdp}"
            await s.wait_connected()
            await s.wait_video(30, timeout=10)
            await s.wait_audio(50, timeout=10)
            assert_identity(s, GREEN, RED, 440.0)
        finally:
            await c.close()

    arun(go(), timeout=60)
