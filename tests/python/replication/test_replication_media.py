"""Participant replication with real peers (BEHAVIOUR §6): an aiortc publisher in stage A
appears, live, as a publisher of other stages; subscribers there decode what A's
subscribers decode. Also what the API records about it (participants, events,
ListParticipantReplicas), fan-out to 5 destinations, the 6th's quota, pagination."""

from __future__ import annotations

import asyncio
import re
import time

from media_peers import Cleanup, Subscriber, colour_distance, describe
from replication_peers import (
    GREEN,
    RED,
    SAME_CONTENT_TOLERANCE,
    YELLOW,
    Viewer,
    active_session,
    all_replicas,
    api,
    assert_header_members,
    assert_media_ended,
    assert_tone,
    assert_video_colour,
    events_of,
    names,
    publish,
    refused,
    set_colour,
    stage_id,
    wait_colour,
    wait_event,
)

NEXT_TOKEN = re.compile(r"[a-zA-Z0-9+/=_-]{1,1024}")


def test_replica_in_b_decodes_what_a_decodes_and_is_recorded(ivs, make_stage, token_for, arun):
    """A publisher (red, 440 Hz) in A; a subscriber in A and one in B (which learns of
    the replica from B's STAGE_STATE) decode the same colour and tone, and follow
    the publisher when it repaints itself (yellow): the replica is live. The replica
    is a real participant of B with the fields, events and attributes of BEHAVIOUR §6."""
    a, b = make_stage("source"), make_stage("destination")
    tp = token_for(a, "host", ("PUBLISH",), attributes={"role": "host", "lang": "en"})
    tva = token_for(a, "viewer-a", ("SUBSCRIBE",))
    tvb = token_for(b, "viewer-b", ("SUBSCRIBE",))
    tvb2 = token_for(b, "late-viewer-b", ("SUBSCRIBE",))
    pid = tp["participantId"]
    request_attributes = {"lang": "fr", "origin": "stage-a"}
    merged = {"role": "host", "lang": "fr", "origin": "stage-a"}

    async def go():
        c = Cleanup()
        try:
            p = await publish(c, a, tp, "publisher in A", colour=RED, tone=440.0)
            src_session = await asyncio.to_thread(active_session, ivs, a["arn"])
            assert src_session, "no active session in A while its publisher is connected"
            sa = c.add(Subscriber("subscriber in A"))
            r = await sa.subscribe(a["endpoints"]["whip"], pid, tva["token"])
            assert r.status_code == 201, describe(r)
            await sa.wait_video(15, timeout=10)

            vb = await Viewer.open(c, b, tvb, "viewer in B")
            dst_session = await asyncio.to_thread(active_session, ivs, b["arn"])
            assert dst_session, "B has no session while its viewer holds the events socket"
            mark = len(vb.events.messages)

            resp = await api(ivs.start_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
                             participantId=pid, reconnectWindowSeconds=0, attributes=request_attributes)
            assert_header_members(resp, "StartParticipantReplication")

            # In place when the call returns: no waiting for any of this.
            rep = (await api(ivs.get_participant, stageArn=b["arn"], sessionId=dst_session,
                             participantId=pid))["participant"]
            want = {"participantId": pid, "userId": "host", "state": "CONNECTED", "published": True,
                    "attributes": merged, "replicationType": "REPLICA", "replicationState": "ACTIVE",
                    "sourceStageArn": a["arn"], "sourceSessionId": src_session}
            assert {k: rep.get(k) for k in want} == want, f"GetParticipant of the replica in B: {rep}"
            listed = {x["participantId"]: x for x in
                      (await api(ivs.list_participants, stageArn=b["arn"], sessionId=dst_session))["participants"]}
            assert set(listed) == {pid, tvb["participantId"]}, listed
            summary_want = {k: v for k, v in want.items() if k != "attributes"}
            assert {k: listed[pid].get(k) for k in summary_want} == summary_want, f"ListParticipants in B: {listed[pid]}"
            published = (await api(ivs.list_participants, stageArn=b["arn"], sessionId=dst_session,
                                   filterByPublished=True))["participants"]
            assert [x["participantId"] for x in published] == [pid], published
            viewer_rec = listed[tvb["participantId"]]
            assert viewer_rec.get("replicationType") in (None, "NONE"), f"B's own viewer: {viewer_rec}"

            src = (await api(ivs.get_participant, stageArn=a["arn"], sessionId=src_session,
                             participantId=pid))["participant"]
            assert (src.get("replicationType"), src.get("replicationState")) == ("SOURCE", "ACTIVE"), src
            assert src["attributes"] == {"role": "host", "lang": "en"}, f"the source keeps its token's attributes: {src}"
            assert src["state"] == "CONNECTED" and src["published"] is True, src
            in_a = {x["participantId"]: x for x in
                    (await api(ivs.list_participants, stageArn=a["arn"], sessionId=src_session))["participants"]}
            assert (in_a[pid].get("replicationType"), in_a[pid].get("replicationState")) == ("SOURCE", "ACTIVE"), in_a
            assert in_a[tva["participantId"]].get("replicationType") in (None, "NONE"), in_a

            reps = await asyncio.to_thread(all_replicas, ivs, a["arn"], pid)
            assert reps == [{"sourceStageArn": a["arn"], "participantId": pid, "sourceSessionId": src_session,
                             "destinationStageArn": b["arn"], "destinationSessionId": dst_session,
                             "replicationState": "ACTIVE"}], reps
            out_of_b = (await api(ivs.list_participant_replicas, sourceStageArn=b["arn"], participantId=pid))["replicas"]
            assert out_of_b == [], f"the replica has no replications out of B: {out_of_b}"

            # Events: REPLICATION_STARTED on the source, JOINED / PUBLISH_STARTED (replica) in B.
            started = await wait_event(ivs, a["arn"], src_session, pid, lambda e: e["name"] == "REPLICATION_STARTED",
                                       2.0, "REPLICATION_STARTED")
            assert started.get("destinationStageArn") == b["arn"], started
            assert started.get("destinationSessionId") == dst_session, started
            assert not started.get("replica"), started
            a_events = await events_of(ivs, a["arn"], src_session, pid)
            assert names(a_events) == ["REPLICATION_STARTED", "PUBLISH_STARTED", "JOINED"], a_events
            assert not any(e.get("replica") for e in a_events), f"the source's own events are not replica events: {a_events}"
            b_events = await events_of(ivs, b["arn"], dst_session, pid)
            assert names(b_events) == ["PUBLISH_STARTED", "JOINED"], b_events
            assert all(e.get("replica") is True for e in b_events), f"B's events of the replica: {b_events}"

            # B's STAGE_STATE lists the replica like any publisher; B's viewer subscribes to it.
            entry = await vb.wait_publishing(pid, 5.0, start=mark)
            want_entry = {"id": pid, "userId": "host", "attributes": merged, "isPublishing": True,
                          "audioMuted": False, "videoStopped": False}
            assert {k: entry.get(k) for k in want_entry} == want_entry, f"the replica in B's STAGE_STATE: {entry}"
            sb = await vb.watch(c, pid, start=mark, frames=30)
            await sb.wait_audio(50, timeout=8)
            await sa.wait_audio(50, timeout=8)

            # Same content on both sides: colour, size, tone.
            await asyncio.sleep(0.5)
            ma = assert_video_colour(sa, RED)
            mb = assert_video_colour(sb, RED)
            assert colour_distance(ma, mb) <= SAME_CONTENT_TOLERANCE, (
                f"A's subscriber decodes {ma.round(1).tolist()}, B's {mb.round(1).tolist()}")
            assert sa.video.sizes == sb.video.sizes == {(320, 240)}, (sa.video.sizes, sb.video.sizes)
            assert_tone(sa, 440.0)
            assert_tone(sb, 440.0)

            # Live: the publisher repaints; both follow, B within the same time as A.
            t_paint = time.monotonic()
            set_colour(p.video, YELLOW)
            await asyncio.gather(wait_colour(sa, YELLOW, t_paint, 4.0), wait_colour(sb, YELLOW, t_paint, 4.0))
            n_a, n_b = sa.video.frames_after(t_paint), sb.video.frames_after(t_paint)
            await asyncio.sleep(1.0)
            got_a, got_b = sa.video.frames_after(t_paint) - n_a, sb.video.frames_after(t_paint) - n_b
            # Relative, not absolute: both decode on this machine, whatever its load.
            assert got_b >= 1 and got_b >= 0.5 * got_a, (
                f"in 1 s A's subscriber decoded {got_a} frames, B's {got_b}: the replica does not keep up")
            assert colour_distance(sa.video.mean_colour(last=5), sb.video.mean_colour(last=5)) <= SAME_CONTENT_TOLERANCE

            # A late subscriber in B gets a keyframe from A's publisher (aiortc makes one only
            # when asked): B's keyframe requests reach the real publisher. How fast is the
            # forwarder's virtual-time tests' business (keyframe requests and their pacing);
            # the bound here only stops a hang.
            await asyncio.sleep(2.0)
            late = c.add(Subscriber("late subscriber in B"))
            r = await late.subscribe(b["endpoints"]["whip"], pid, tvb2["token"])
            assert r.status_code == 201, describe(r)
            await late.wait_video(1, timeout=10)
            assert_video_colour(late, YELLOW, last=3)

            # B's subscription is recorded against the replica.
            sub_events = await events_of(ivs, b["arn"], dst_session, tvb["participantId"])
            starts = [e for e in sub_events if e["name"] == "SUBSCRIBE_STARTED"]
            assert len(starts) == 1 and starts[0].get("remoteParticipantId") == pid, sub_events
            assert starts[0].get("replica") is True, f"SUBSCRIBE_STARTED to a replica carries replica: true: {starts}"
        finally:
            await c.close()

    arun(go(), timeout=90)


def test_fan_out_to_five_destinations_and_the_sixth_is_refused(ivs, make_stage, token_for, arun):
    """One publisher replicated into 5 stages at once: a viewer in each decodes it.
    A 6th → ServiceQuotaExceeded (402). ListParticipantReplicas paginates (1..50),
    also while a replication is added mid-way; stopped replications stay listed and
    free their quota slot."""
    a = make_stage("source")
    dests = [make_stage(f"destination-{i}") for i in range(7)]
    tp = token_for(a, "host", ("PUBLISH",))
    pid = tp["participantId"]
    viewer_tokens = [token_for(d, f"viewer-{i}", ("SUBSCRIBE",)) for i, d in enumerate(dests[:5])]

    async def go():
        c = Cleanup()
        try:
            await publish(c, a, tp, "publisher in A", colour=GREEN, tone=660.0)
            src_session = await asyncio.to_thread(active_session, ivs, a["arn"])
            viewers = [await Viewer.open(c, d, t, f"viewer {i}") for i, (d, t) in enumerate(zip(dests, viewer_tokens))]
            marks = [len(v.events.messages) for v in viewers]

            results = await asyncio.gather(*(
                api(ivs.start_participant_replication, sourceStageArn=a["arn"], destinationStageArn=d["arn"],
                    participantId=pid) for d in dests[:5]), return_exceptions=True)
            for d, r in zip(dests[:5], results):
                assert not isinstance(r, BaseException), f"StartParticipantReplication to {stage_id(d)}: {r!r}"
                assert_header_members(r, "StartParticipantReplication")

            subs = await asyncio.gather(*(v.watch(c, pid, start=m, frames=15) for v, m in zip(viewers, marks)))
            for s in subs:
                await s.wait_audio(30, timeout=8)
            await asyncio.sleep(0.5)
            for s in subs:
                assert_video_colour(s, GREEN)
                assert_tone(s, 660.0)

            await refused(ivs.start_participant_replication, "ServiceQuotaExceededException",
                          sourceStageArn=a["arn"], destinationStageArn=dests[5]["arn"], participantId=pid)
            src = (await api(ivs.get_participant, stageArn=a["arn"], sessionId=src_session,
                             participantId=pid))["participant"]
            assert (src.get("replicationType"), src.get("replicationState")) == ("SOURCE", "ACTIVE"), src

            dst_sessions = {d["arn"]: await asyncio.to_thread(active_session, ivs, d["arn"]) for d in dests[:5]}
            reps = await asyncio.to_thread(all_replicas, ivs, a["arn"], pid)
            assert sorted(reps, key=lambda r: r["destinationStageArn"]) == sorted(
                ({"sourceStageArn": a["arn"], "participantId": pid, "sourceSessionId": src_session,
                  "destinationStageArn": arn, "destinationSessionId": sid, "replicationState": "ACTIVE"}
                 for arn, sid in dst_sessions.items()), key=lambda r: r["destinationStageArn"]), reps

            # Pagination: every size from 1 to 50 gives the same five, pages of at most maxResults.
            for size in (1, 2, 3, 4, 5, 50):
                pages, token = [], None
                while True:
                    kw = dict(sourceStageArn=a["arn"], participantId=pid, maxResults=size)
                    if token:
                        kw["nextToken"] = token
                    page = await api(ivs.list_participant_replicas, **kw)
                    pages.append(page["replicas"])
                    token = page.get("nextToken")
                    if token is not None:
                        assert NEXT_TOKEN.fullmatch(token), f"nextToken {token!r}"
                        assert len(page["replicas"]) == size, f"a non-last page shorter than {size}: {pages}"
                    if not token:
                        break
                    assert len(pages) <= 6, f"maxResults {size}: no end of pages: {pages}"
                got = [r["destinationStageArn"] for pg in pages for r in pg]
                assert sorted(got) == sorted(dst_sessions), f"maxResults {size}: pages {pages}"
                assert all(len(pg) <= size for pg in pages), pages
                assert len(pages) == -(-5 // size), f"maxResults {size}: {len(pages)} pages: {pages}"
            for bad in (0, 51):
                await refused(ivs.list_participant_replicas, "ValidationException", "maxResults",
                              sourceStageArn=a["arn"], participantId=pid, maxResults=bad)
            await refused(ivs.list_participant_replicas, "ValidationException",
                          sourceStageArn=a["arn"], participantId=pid, nextToken="not-a-token-onstage-made")
            for kw in (dict(sourceStageArn=a["arn"], participantId="abcdefabcdef"),
                       dict(sourceStageArn=a["arn"].rsplit("/", 1)[0] + "/Zz0000000009", participantId=pid),
                       dict(sourceStageArn=dests[0]["arn"], participantId=pid)):
                got = (await api(ivs.list_participant_replicas, **kw))["replicas"]
                assert got == [], f"ListParticipantReplicas({kw}) = {got}"

            # Stop two: their viewers' media ends, the other three keep decoding.
            t0 = time.monotonic()
            for d in dests[:2]:
                resp = await api(ivs.stop_participant_replication, sourceStageArn=a["arn"],
                                 destinationStageArn=d["arn"], participantId=pid)
                assert_header_members(resp, "StopParticipantReplication")
            await asyncio.gather(*(assert_media_ended(s, t0) for s in subs[:2]))
            for s in subs[2:]:
                assert s.video.frames_after(t0 + 1.0) >= 20, (
                    f"{s.label}: {s.video.frames_after(t0 + 1.0)} frames in the 2 s after two other replications "
                    f"stopped; states {s.state_names()}")

            # The freed slots: a 6th destination now, and a 7th while a listing is under way.
            await api(ivs.start_participant_replication, sourceStageArn=a["arn"],
                      destinationStageArn=dests[5]["arn"], participantId=pid)
            first = await api(ivs.list_participant_replicas, sourceStageArn=a["arn"], participantId=pid, maxResults=2)
            await api(ivs.start_participant_replication, sourceStageArn=a["arn"],
                      destinationStageArn=dests[6]["arn"], participantId=pid)
            seen, token = list(first["replicas"]), first.get("nextToken")
            while token:
                page = await api(ivs.list_participant_replicas, sourceStageArn=a["arn"], participantId=pid,
                                 maxResults=2, nextToken=token)
                seen += page["replicas"]
                token = page.get("nextToken")
            got = [r["destinationStageArn"] for r in seen]
            assert len(got) == len(set(got)), f"a record listed twice across pages: {seen}"
            assert {d["arn"] for d in dests[:6]} <= set(got), f"a record missing across pages: {seen}"

            reps = await asyncio.to_thread(all_replicas, ivs, a["arn"], pid)
            states = {r["destinationStageArn"]: r["replicationState"] for r in reps}
            assert len(reps) == 7 and states == {**{d["arn"]: "STOPPED" for d in dests[:2]},
                                                 **{d["arn"]: "ACTIVE" for d in dests[2:]}}, reps
            # Five active again: the quota bites again.
            await refused(ivs.start_participant_replication, "ServiceQuotaExceededException",
                          sourceStageArn=a["arn"], destinationStageArn=dests[0]["arn"], participantId=pid)
        finally:
            await c.close()

    arun(go(), timeout=120)
