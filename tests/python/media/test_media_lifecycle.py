"""What real peers do, as boto3 sees it: sessions, participants, participant events,
and DisconnectParticipant cutting a subscriber's media."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from media_peers import (
    Cleanup,
    EventsClient,
    Publisher,
    Subscriber,
    active_session,
    describe,
    error_event,
    http,
    participant_events,
    participants_by_id,
    wait_until,
)

GREEN = (40, 190, 60)


def utc(t) -> dt.datetime:
    assert isinstance(t, dt.datetime), t
    return t.astimezone(dt.timezone.utc)


def test_lifecycle_events_sessions_and_participants(stage, token_for, ivs, arun):
    whip = stage["endpoints"]["whip"]
    arn = stage["arn"]
    tp = token_for(stage, "alice", ("PUBLISH",), attributes={"role": "host"})
    ts = token_for(stage, "bob", ("SUBSCRIBE",))
    pub_id, sub_id = tp["participantId"], ts["participantId"]
    assert active_session(ivs, arn) is None, "a stage nobody joined has an active session"

    async def go():
        c = Cleanup()
        try:
            wall_start = dt.datetime.now(dt.timezone.utc)
            p = c.add(Publisher("publisher", colour=GREEN, tone=440.0, video_codec="video/VP8"))
            r = await p.publish(whip, tp["token"])
            assert r.status_code == 201, describe(r)
            await p.wait_connected()
            sid = await wait_until(lambda: active_session(ivs, arn), 5, what="activeSessionId")
            assert sid.startswith("st-") and len(sid) == 16, sid

            s = c.add(Subscriber("subscriber"))
            r = await s.subscribe(whip, pub_id, ts["token"])
            assert r.status_code == 201, describe(r)
            await s.wait_connected()
            await s.wait_video(10, timeout=10)

            # while connected
            part = ivs.get_participant(stageArn=arn, sessionId=sid, participantId=pub_id)["participant"]
            assert part["state"] == "CONNECTED", part
            assert part["published"] is True, part
            assert part["userId"] == "alice", part
            assert part["attributes"] == {"role": "host"}, part
            assert part["protocol"] == "WHIP", part
            assert utc(part["firstJoinTime"]) >= wall_start - dt.timedelta(seconds=2), (part, wall_start)
            sp = ivs.get_participant(stageArn=arn, sessionId=sid, participantId=sub_id)["participant"]
            assert sp["state"] == "CONNECTED" and sp["published"] is False and sp["userId"] == "bob", sp
            listed = {x["participantId"]: x for x in ivs.list_participants(stageArn=arn, sessionId=sid)["participants"]}
            assert set(listed) == {pub_id, sub_id}, listed
            published = ivs.list_participants(stageArn=arn, sessionId=sid, filterByPublished=True)["participants"]
            assert [x["participantId"] for x in published] == [pub_id], published

            # leave: subscriber first, then the publisher
            r = await s.delete()
            assert r is not None and 200 <= r.status_code < 300, describe(r)
            await p.wait_connected()  # still up
            location = p.location
            r = await p.delete()
            assert r is not None and 200 <= r.status_code < 300, describe(r)
            wall_end = dt.datetime.now(dt.timezone.utc)
            again = await http("DELETE", location)
            assert again.status_code == 404, f"a second DELETE of the WHIP resource: {describe(again)}"

            await wait_until(lambda: active_session(ivs, arn) is None, 5, what="the session to end")
            return sid, wall_start, wall_end
        finally:
            await c.close()

    sid, wall_start, wall_end = arun(go(), timeout=60)

    sess = ivs.get_stage_session(stageArn=arn, sessionId=sid)["stageSession"]
    assert sess["sessionId"] == sid
    start, end = utc(sess["startTime"]), utc(sess.get("endTime"))
    slack = dt.timedelta(seconds=2)
    assert wall_start - slack <= start <= wall_end, (start, wall_start, wall_end)
    assert start <= end <= dt.datetime.now(dt.timezone.utc) + slack, (start, end)
    assert end >= wall_end - slack, (end, wall_end)
    sessions = ivs.list_stage_sessions(stageArn=arn)["stageSessions"]
    assert [x["sessionId"] for x in sessions] == [sid], sessions
    assert utc(sessions[0]["endTime"]) == end

    pub_events = participant_events(ivs, arn, sid, pub_id)
    names = [e["name"] for e in pub_events]
    assert names == ["LEFT", "PUBLISH_STOPPED", "PUBLISH_STARTED", "JOINED"], pub_events
    sub_events = participant_events(ivs, arn, sid, sub_id)
    names = [e["name"] for e in sub_events]
    assert names == ["LEFT", "SUBSCRIBE_STOPPED", "SUBSCRIBE_STARTED", "JOINED"], sub_events
    for e in sub_events:
        if e["name"].startswith("SUBSCRIBE_"):
            assert e.get("remoteParticipantId") == pub_id, e
        else:
            assert e.get("remoteParticipantId") is None, e
    for events in (pub_events, sub_events):
        times = [utc(e["eventTime"]) for e in events]
        assert times == sorted(times, reverse=True), f"not newest first: {events}"
        assert all(e.get("errorCode") is None for e in events), events
        assert all(e["participantId"] in (pub_id, sub_id) for e in events), events
    part = ivs.get_participant(stageArn=arn, sessionId=sid, participantId=pub_id)["participant"]
    assert part["state"] == "DISCONNECTED" and part["published"] is True, part


def test_disconnect_participant_cuts_a_subscriber_within_a_second(stage, token_for, ivs, arun):
    whip = stage["endpoints"]["whip"]
    arn = stage["arn"]
    tp = token_for(stage, "presenter", ("PUBLISH",))
    ts = token_for(stage, "viewer", ("SUBSCRIBE",))
    sub_id = ts["participantId"]

    async def go():
        c = Cleanup()
        try:
            p = c.add(Publisher("publisher", colour=GREEN, tone=440.0, video_codec="video/VP8"))
            r = await p.publish(whip, tp["token"])
            assert r.status_code == 201, describe(r)
            await p.wait_connected()
            s = c.add(Subscriber("subscriber"))
            r = await s.subscribe(whip, tp["participantId"], ts["token"])
            assert r.status_code == 201, describe(r)
            await s.wait_connected()
            await s.wait_video(20, timeout=10)
            await s.wait_audio(20, timeout=10)
            sid = active_session(ivs, arn)
            assert sid, "no active session while two peers are connected"

            t0 = time.monotonic()
            await asyncio.to_thread(ivs.disconnect_participant, stageArn=arn, participantId=sub_id,
                                    reason="removed by the media test")
            # the subscriber's tracks end (RTCP BYE / DTLS close), not merely go quiet,
            # and nothing is decoded after they did (how soon is not asserted here:
            # timing is the forwarder's virtual-time tests' business)
            await wait_until(lambda: s.video.ended_at is not None and s.audio.ended_at is not None, 10,
                             what="the disconnected subscriber's tracks to end")
            ended = max(s.video.ended_at, s.audio.ended_at)
            await asyncio.sleep(1.0)
            late_video = s.video.frames_after(ended)
            late_audio = sum(1 for a in s.audio.arrivals if a > ended)
            assert late_video == 0 and late_audio == 0, (
                f"DisconnectParticipant: the subscriber still decoded {late_video} video and {late_audio} audio "
                f"frames after its tracks ended (+{ended - t0:.3f}s); subscriber states {s.state_names()}")
            # the publisher is untouched
            assert p.pc.connectionState == "connected", p.state_names()

            # the same token is refused afterwards
            again = c.add(Subscriber("subscriber again"))
            r = await again.subscribe(whip, tp["participantId"], ts["token"])
            assert r.status_code == 403, describe(r)
            assert r.text.strip(), describe(r)
            # a removed participant cannot join again: JOIN_ERROR, INSUFFICIENT_CAPABILITIES
            await error_event(ivs, arn, sid, sub_id, "JOIN_ERROR", "INSUFFICIENT_CAPABILITIES")
            return sid
        finally:
            await c.close()

    sid = arun(go(), timeout=60)
    names = [e["name"] for e in participant_events(ivs, arn, sid, sub_id)]
    assert "LEFT" in names and names.index("LEFT") < names.index("SUBSCRIBE_STARTED"), names
    part = ivs.get_participant(stageArn=arn, sessionId=sid, participantId=sub_id)["participant"]
    assert part["state"] == "DISCONNECTED", part


def test_publisher_leaving_ends_its_subscribers_tracks(stage, token_for, ivs, arun):
    """A publisher's DELETE ends the subscription cleanly: the subscriber stops
    decoding, the server records SUBSCRIBE_STOPPED, and the events socket drops the
    publisher."""
    whip, events_url = stage["endpoints"]["whip"], stage["endpoints"]["events"]
    arn = stage["arn"]
    stage_id = arn.rsplit("/", 1)[1]
    tp = token_for(stage, "presenter", ("PUBLISH",))
    ts = token_for(stage, "viewer", ("SUBSCRIBE",))
    pub_id = tp["participantId"]

    async def go():
        c = Cleanup()
        try:
            ev = c.add(EventsClient("viewer events"))
            await ev.connect(events_url, stage_id, ts["token"])
            p = c.add(Publisher("publisher", colour=GREEN, tone=440.0, video_codec="video/VP8"))
            assert (await p.publish(whip, tp["token"])).status_code == 201
            await p.wait_connected()
            s = c.add(Subscriber("subscriber"))
            r = await s.subscribe(whip, pub_id, ts["token"])
            assert r.status_code == 201, describe(r)
            await s.wait_video(10, timeout=10)
            sid = active_session(ivs, arn)
            mark = len(ev.messages)
            t0 = time.monotonic()
            r = await p.delete()
            assert r is not None and 200 <= r.status_code < 300, describe(r)
            await ev.wait_state(lambda st: pub_id not in participants_by_id(st), 5, start=mark,
                                what="STAGE_STATE without the publisher")
            for kind, sink in (("video", s.video), ("audio", s.audio)):
                assert sink is not None, f"no {kind} track"
            await wait_until(lambda: s.video.ended_at is not None and s.audio.ended_at is not None, 10,
                             what="the subscriber's tracks to end after its publisher left")
            ended = max(s.video.ended_at, s.audio.ended_at)
            await asyncio.sleep(1.0)
            late = s.video.frames_after(ended)
            assert late == 0, (f"{late} frames decoded after the tracks ended (+{ended - t0:.3f}s); "
                               f"subscriber states {s.state_names()}")
            return sid
        finally:
            await c.close()

    sid = arun(go(), timeout=60)
    names = [e["name"] for e in participant_events(ivs, arn, sid, ts["participantId"])]
    assert "SUBSCRIBE_STOPPED" in names, names


def test_a_peer_that_vanishes_is_detected_and_recorded_as_left(server_factory, token_for, arun):
    """A publisher killed with SIGKILL says no goodbye: onstage notices its silence,
    records PUBLISH_STOPPED and LEFT, and tells the stage. The server here runs with a
    2 s --silence-timeout, so the test waits seconds, not the default 12 s; how long
    detection takes is the forwarder's virtual-time tests' business, not this one's."""
    srv = server_factory(extra_args=["--silence-timeout", "2"])
    ivs = srv.client()
    stage = ivs.create_stage(name="vanish")["stage"]
    whip, events_url = stage["endpoints"]["whip"], stage["endpoints"]["events"]
    arn = stage["arn"]
    stage_id = arn.rsplit("/", 1)[1]
    tp = token_for(stage, "vanishing", ("PUBLISH",), client=ivs)
    tw = token_for(stage, "witness", (), client=ivs)
    pid = tp["participantId"]
    script = Path(__file__).with_name("peer_process.py")
    proc = subprocess.Popen([sys.executable, str(script), whip, tp["token"]], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:
        async def go():
            c = Cleanup()
            try:
                ev = c.add(EventsClient("witness"))
                await ev.connect(events_url, stage_id, tw["token"])
                line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
                assert json.loads(line or "{}").get("connected") is True, f"the peer process said {line!r}"
                await ev.wait_state(lambda s: participants_by_id(s).get(pid, {}).get("isPublishing") is True, 5)
                sid = active_session(ivs, arn)
                mark = len(ev.messages)
                proc.send_signal(signal.SIGKILL)
                t0 = time.monotonic()
                # A generous bound: it only keeps a broken detection from hanging the suite.
                await ev.wait_state(lambda s: pid not in participants_by_id(s), 30, start=mark,
                                    what="STAGE_STATE without the vanished publisher")
                print(f"vanished publisher dropped after {time.monotonic() - t0:.2f}s")
                part = await asyncio.to_thread(ivs.get_participant, stageArn=arn, sessionId=sid, participantId=pid)
                assert part["participant"]["state"] == "DISCONNECTED", part
                names = [e["name"] for e in await asyncio.to_thread(participant_events, ivs, arn, sid, pid)]
                assert names == ["LEFT", "PUBLISH_STOPPED", "PUBLISH_STARTED", "JOINED"], names
            finally:
                await c.close()

        arun(go(), timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
