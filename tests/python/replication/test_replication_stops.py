"""Every way a replication stops (BEHAVIOUR §6), each checked the same way
(replication_peers.expect_stopped): STOPPED in ListParticipantReplicas,
REPLICATION_STOPPED on the source participant, the replica DISCONNECTED with
PUBLISH_STOPPED and LEFT in the destination and gone from its STAGE_STATE, the
destination viewer's media ended within 2 s, the destination session ended once
nobody else is there. And a new Start after a stop works again."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from helpers import assert_seven_headers, call
from media_peers import Cleanup, Publisher
from replication_peers import (
    RED,
    Viewer,
    active_session,
    all_replicas,
    api,
    assert_header_members,
    assert_video_colour,
    events_of,
    expect_stopped,
    names,
    publish,
    refused,
    replicas_to,
    stage_id,
    wait_session_ended,
)


@dataclass
class Scene:
    a: dict
    dests: list
    tp: dict
    viewer_tokens: list
    window: int
    pid: str = ""
    publisher: Publisher | None = None
    src_session: str = ""
    dst_sessions: list = field(default_factory=list)
    viewers: list = field(default_factory=list)
    marks: list = field(default_factory=list)

    @property
    def b(self) -> dict:
        return self.dests[0]


def make_scene(make_stage, token_for, n_dest: int = 1, window: int = 0) -> Scene:
    a = make_stage("source")
    dests = [make_stage(f"destination-{i}") for i in range(n_dest)]
    tp = token_for(a, "host", ("PUBLISH",))
    vts = [token_for(d, f"viewer-{i}", ("SUBSCRIBE",)) for i, d in enumerate(dests)]
    return Scene(a, dests, tp, vts, window, pid=tp["participantId"])


async def run_scene(ivs, s: Scene, c: Cleanup, viewers_first: bool = True) -> None:
    """Publisher (red, 440 Hz) in A; replication into every destination; a viewer in
    each decoding the replica."""
    s.publisher = await publish(c, s.a, s.tp, "publisher in A", colour=RED, tone=440.0)
    s.src_session = await asyncio.to_thread(active_session, ivs, s.a["arn"])
    assert s.src_session, "A has no session while its publisher is connected"
    if viewers_first:
        s.viewers = [await Viewer.open(c, d, t, f"viewer in {stage_id(d)}") for d, t in zip(s.dests, s.viewer_tokens)]
        s.marks = [len(v.events.messages) for v in s.viewers]
    for d in s.dests:
        if not viewers_first:
            assert await asyncio.to_thread(active_session, ivs, d["arn"]) is None, "the destination is idle before"
        resp = await api(ivs.start_participant_replication, sourceStageArn=s.a["arn"], destinationStageArn=d["arn"],
                         participantId=s.pid, reconnectWindowSeconds=s.window)
        assert_header_members(resp, "StartParticipantReplication")
        sid = await asyncio.to_thread(active_session, ivs, d["arn"])
        assert sid, f"no session in {stage_id(d)} when StartParticipantReplication returned"
        s.dst_sessions.append(sid)
    if not viewers_first:
        s.viewers = [await Viewer.open(c, d, t, f"viewer in {stage_id(d)}") for d, t in zip(s.dests, s.viewer_tokens)]
        s.marks = [0 for _ in s.viewers]
    for v, m in zip(s.viewers, s.marks):
        await v.watch(c, s.pid, start=m, frames=15)
    for v in s.viewers:
        assert_video_colour(v.sub, RED)
        v.mark = len(v.events.messages)


def test_stop_participant_replication_then_start_again(ivs, server, make_stage, token_for, arun):
    s = make_scene(make_stage, token_for)

    async def go():
        c = Cleanup()
        try:
            await run_scene(ivs, s, c)
            a, b, pid, v = s.a, s.b, s.pid, s.viewers[0]
            t0 = time.monotonic()
            resp = await api(ivs.stop_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
                             participantId=pid)
            assert_header_members(resp, "StopParticipantReplication")
            await expect_stopped(ivs, src=a, dst=b, pid=pid, src_session=s.src_session, dst_session=s.dst_sessions[0],
                                 t0=t0, viewer=v, mark=v.mark, viewer_leaves=False)
            assert s.publisher.pc.connectionState == "connected", "stopping a replication left the source alone"

            # no ACTIVE replication for the triple (any more, or ever) → ResourceNotFound
            for kw in (dict(sourceStageArn=a["arn"], destinationStageArn=b["arn"], participantId=pid),
                       dict(sourceStageArn=b["arn"], destinationStageArn=a["arn"], participantId=pid),
                       dict(sourceStageArn=a["arn"], destinationStageArn=b["arn"], participantId="abcdefabcdef")):
                await refused(ivs.stop_participant_replication, "ResourceNotFoundException",
                              kw["participantId"], **kw)

            # a new Start works again — raw, to see the exact `200 {}`
            mark = len(v.events.messages)
            r = await asyncio.to_thread(call, server, "StartParticipantReplication",
                                        {"sourceStageArn": a["arn"], "destinationStageArn": b["arn"],
                                         "participantId": pid})
            assert r.status_code == 200, f"POST /StartParticipantReplication -> {r.status_code} {r.text}"
            assert json.loads(r.text) == {}, f"the body of a started replication: {r.text!r}"
            assert_seven_headers(r.headers)
            sub = await v.watch(c, pid, start=mark, frames=15)
            assert_video_colour(sub, RED)
            recs = await asyncio.to_thread(replicas_to, ivs, a["arn"], pid, b["arn"])
            assert sorted(x["replicationState"] for x in recs) == ["ACTIVE", "STOPPED"], recs
            assert all(x["sourceSessionId"] == s.src_session and x["destinationSessionId"] == s.dst_sessions[0]
                       for x in recs), recs
            rep = (await api(ivs.get_participant, stageArn=b["arn"], sessionId=s.dst_sessions[0],
                             participantId=pid))["participant"]
            assert (rep["state"], rep.get("replicationType"), rep.get("replicationState")) == \
                ("CONNECTED", "REPLICA", "ACTIVE"), f"the replica, replicated again into the same session: {rep}"
            evs = await events_of(ivs, b["arn"], s.dst_sessions[0], pid)
            assert names(evs) == ["PUBLISH_STARTED", "JOINED", "LEFT", "PUBLISH_STOPPED", "PUBLISH_STARTED",
                                  "JOINED"], evs
            src = (await api(ivs.get_participant, stageArn=a["arn"], sessionId=s.src_session,
                             participantId=pid))["participant"]
            assert (src.get("replicationType"), src.get("replicationState")) == ("SOURCE", "ACTIVE"), src
            a_names = names(await events_of(ivs, a["arn"], s.src_session, pid))
            assert a_names == ["REPLICATION_STARTED", "REPLICATION_STOPPED", "REPLICATION_STARTED", "PUBLISH_STARTED",
                               "JOINED"], a_names
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_source_unpublishing_with_window_0_stops_it_and_ends_an_idle_destination(ivs, make_stage, token_for, arun):
    """The destination is idle until the Start (which starts its session); the viewer
    arrives afterwards. The source's DELETE (window 0) stops the replication at once."""
    s = make_scene(make_stage, token_for, window=0)

    async def go():
        c = Cleanup()
        try:
            await run_scene(ivs, s, c, viewers_first=False)
            v = s.viewers[0]
            t0 = time.monotonic()
            r = await s.publisher.delete()
            assert r is not None and 200 <= r.status_code < 300, r
            await expect_stopped(ivs, src=s.a, dst=s.b, pid=s.pid, src_session=s.src_session,
                                 dst_session=s.dst_sessions[0], t0=t0, viewer=v, mark=v.mark)
            await wait_session_ended(ivs, s.a["arn"], 3.0, "the source left A with window 0")
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_disconnecting_the_source_stops_at_once_despite_a_window(ivs, make_stage, token_for, arun):
    s = make_scene(make_stage, token_for, window=30)

    async def go():
        c = Cleanup()
        try:
            await run_scene(ivs, s, c)
            v = s.viewers[0]
            t0 = time.monotonic()
            await api(ivs.disconnect_participant, stageArn=s.a["arn"], participantId=s.pid, reason="replication test")
            await expect_stopped(ivs, src=s.a, dst=s.b, pid=s.pid, src_session=s.src_session,
                                 dst_session=s.dst_sessions[0], t0=t0, viewer=v, mark=v.mark)
            await wait_session_ended(ivs, s.a["arn"], 3.0, "the disconnected source keeps no window open")
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_disconnecting_the_replica_stops_only_that_replication(ivs, make_stage, token_for, arun):
    """Two destinations B and C; DisconnectParticipant of the replica in B stops A→B
    only: C's viewer keeps decoding, A→C stays ACTIVE. A→B may be started again."""
    s = make_scene(make_stage, token_for, n_dest=2)

    async def go():
        c = Cleanup()
        try:
            await run_scene(ivs, s, c)
            (b, cc), (vb, vc) = s.dests, s.viewers
            t0 = time.monotonic()
            await api(ivs.disconnect_participant, stageArn=b["arn"], participantId=s.pid, reason="not here")
            await expect_stopped(ivs, src=s.a, dst=b, pid=s.pid, src_session=s.src_session,
                                 dst_session=s.dst_sessions[0], t0=t0, viewer=vb, mark=vb.mark,
                                 source_still_replicating=True, viewer_leaves=False)
            assert vc.sub.video.frames_after(t0 + 1.0) >= 20, (
                f"C's viewer decoded {vc.sub.video.frames_after(t0 + 1.0)} frames in the 2 s after B's replica "
                f"was disconnected; states {vc.sub.state_names()}")
            assert_video_colour(vc.sub, RED)
            assert s.publisher.pc.connectionState == "connected", s.publisher.state_names()
            recs = {r["destinationStageArn"]: r["replicationState"]
                    for r in await asyncio.to_thread(all_replicas, ivs, s.a["arn"], s.pid)}
            assert recs == {b["arn"]: "STOPPED", cc["arn"]: "ACTIVE"}, recs
            rep_c = (await api(ivs.get_participant, stageArn=cc["arn"], sessionId=s.dst_sessions[1],
                               participantId=s.pid))["participant"]
            assert (rep_c["state"], rep_c.get("replicationState")) == ("CONNECTED", "ACTIVE"), rep_c
            assert "LEFT" not in names(await events_of(ivs, cc["arn"], s.dst_sessions[1], s.pid))

            # BEHAVIOUR §6: a new Start may replicate it again, also where a replica was disconnected.
            mark = len(vb.events.messages)
            await api(ivs.start_participant_replication, sourceStageArn=s.a["arn"], destinationStageArn=b["arn"],
                      participantId=s.pid)
            sub = await vb.watch(c, s.pid, start=mark, frames=15)
            assert_video_colour(sub, RED)
            recs = sorted(r["replicationState"] for r in
                          await asyncio.to_thread(replicas_to, ivs, s.a["arn"], s.pid, b["arn"]))
            assert recs == ["ACTIVE", "STOPPED"], recs
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_deleting_the_destination_stops_it_and_keeps_the_record(ivs, make_stage, token_for, arun):
    s = make_scene(make_stage, token_for)

    async def go():
        c = Cleanup()
        try:
            await run_scene(ivs, s, c)
            v = s.viewers[0]
            t0 = time.monotonic()
            await api(ivs.delete_stage, arn=s.b["arn"])
            await expect_stopped(ivs, src=s.a, dst=s.b, pid=s.pid, src_session=s.src_session,
                                 dst_session=s.dst_sessions[0], t0=t0, viewer=v, destination_deleted=True)
            assert s.publisher.pc.connectionState == "connected", s.publisher.state_names()
            await refused(ivs.get_stage, "ResourceNotFoundException", arn=s.b["arn"])
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_deleting_the_source_stops_it_and_takes_the_records(ivs, make_stage, token_for, arun):
    s = make_scene(make_stage, token_for)

    async def go():
        c = Cleanup()
        try:
            await run_scene(ivs, s, c)
            v = s.viewers[0]
            t0 = time.monotonic()
            await api(ivs.delete_stage, arn=s.a["arn"])
            await expect_stopped(ivs, src=s.a, dst=s.b, pid=s.pid, src_session=s.src_session,
                                 dst_session=s.dst_sessions[0], t0=t0, viewer=v, mark=v.mark, source_deleted=True)
            ended = await s.publisher.wait_ended(3.0)
            assert ended, f"the publisher in the deleted stage A is still {s.publisher.pc.connectionState}"
        finally:
            await c.close()

    arun(go(), timeout=60)
