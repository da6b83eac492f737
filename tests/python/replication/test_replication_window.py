"""The reconnect window (BEHAVIOUR §6), both ways.

Within the window: the publisher drops without a goodbye and publishes again with its
token; the replication stays ACTIVE, the replica keeps its place in B, the source
session stays the same (it is held open while nobody is in A), and B's viewer — on
its existing subscription, with no API call — decodes the new publish (another
colour and tone). Three ways to drop: the peer connection closed without the WHIP
DELETE (the server notices the drop; the window runs), the WHIP DELETE (the
publisher stops publishing; the window runs), and the publishing process SIGKILLed
(the server notices nothing; the returning publish replaces it).

Past the window: the replication stops when the window ends, not before.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from media_peers import Cleanup, participants_by_id
from replication_peers import (
    BLUE,
    RED,
    Viewer,
    active_session,
    all_replicas,
    api,
    assert_video_colour,
    drop_without_goodbye,
    events_of,
    expect_stopped,
    names,
    publish,
    replica_state,
    wait_colour,
    wait_session_ended,
    wait_stopped,
    wait_tone,
)

PEER_PROCESS = Path(__file__).resolve().parents[1] / "media" / "peer_process.py"
GREY = (120, 120, 120)  # what peer_process.py sends (440 Hz)
WINDOW = 5


@pytest.mark.parametrize("drop", ["dtls-close", "whip-delete", "sigkill"])
def test_publisher_returning_within_the_window_resumes_on_the_same_subscription(
        ivs, make_stage, token_for, arun, drop):
    a, b = make_stage("source"), make_stage("destination")
    tp = token_for(a, "host", ("PUBLISH",))
    tv = token_for(b, "viewer", ("SUBSCRIBE",))
    pid = tp["participantId"]
    proc = None
    if drop == "sigkill":
        proc = subprocess.Popen([sys.executable, str(PEER_PROCESS), a["endpoints"]["whip"], tp["token"]],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    first_colour, first_tone = (GREY, 440.0) if drop == "sigkill" else (RED, 440.0)

    async def go():
        c = Cleanup()
        try:
            if proc is not None:
                line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
                assert json.loads(line or "{}").get("connected") is True, f"the peer process said {line!r}"
                p1 = None
            else:
                p1 = await publish(c, a, tp, "first publish (red)", colour=RED, tone=440.0)
            src_session = await asyncio.to_thread(active_session, ivs, a["arn"])
            assert src_session
            v = await Viewer.open(c, b, tv, "viewer in B")
            dst_session = await asyncio.to_thread(active_session, ivs, b["arn"])
            mark = len(v.events.messages)
            await api(ivs.start_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
                      participantId=pid, reconnectWindowSeconds=WINDOW)
            sub = await v.watch(c, pid, start=mark, frames=15)
            await sub.wait_audio(30, timeout=8)
            assert_video_colour(sub, first_colour)
            states_before = list(sub.state_names())
            mark = len(v.events.messages)

            # the drop
            t_drop = time.monotonic()
            if proc is not None:
                proc.send_signal(signal.SIGKILL)
            elif drop == "whip-delete":
                r = await p1.delete()
                assert r is not None and 200 <= r.status_code < 300, r
                await drop_without_goodbye(p1)
            else:
                await drop_without_goodbye(p1)
            await asyncio.sleep(1.5)
            got = await replica_state(ivs, a["arn"], pid, b["arn"])
            assert got == ["ACTIVE"], f"1.5 s into a {WINDOW} s window: {got}"
            held = await asyncio.to_thread(active_session, ivs, a["arn"])
            assert held == src_session, (
                f"1.5 s into the window the source stage's session is {held!r}, not {src_session!r} "
                "(BEHAVIOUR §6: the window holds the source session open)")
            for st in [m["payload"] for _, m in v.events.messages[mark:] if m.get("type") == "STAGE_STATE"]:
                assert pid in participants_by_id(st), f"the replica left B's STAGE_STATE during the window: {st}"

            # the return, with another colour and tone, same token; no API call
            t_back = time.monotonic()
            await publish(c, a, tp, "second publish (blue)", colour=BLUE, tone=1000.0)
            await wait_colour(sub, BLUE, t_back, 8.0)
            await wait_tone(sub, 1000.0, 5.0)
            assert sub.state_names() == states_before and sub.pc.connectionState == "connected", (
                f"B's subscription changed state: {sub.state_names()}")

            # well past where the window would have ended: still ACTIVE, still live
            await asyncio.sleep(max(0.0, t_drop + WINDOW + 1.5 - time.monotonic()))
            t_check = time.monotonic()
            await asyncio.sleep(1.0)
            assert sub.video.frames_after(t_check) >= 15, (
                f"B's viewer decoded {sub.video.frames_after(t_check)} frames in 1 s after the window's end")
            assert_video_colour(sub, BLUE, since=t_check, last=5)
            reps = await asyncio.to_thread(all_replicas, ivs, a["arn"], pid)
            assert reps == [{"sourceStageArn": a["arn"], "participantId": pid, "sourceSessionId": src_session,
                             "destinationStageArn": b["arn"], "destinationSessionId": dst_session,
                             "replicationState": "ACTIVE"}], reps
            assert await asyncio.to_thread(active_session, ivs, a["arn"]) == src_session
            src = (await api(ivs.get_participant, stageArn=a["arn"], sessionId=src_session,
                             participantId=pid))["participant"]
            assert (src["state"], src.get("replicationType"), src.get("replicationState")) == \
                ("CONNECTED", "SOURCE", "ACTIVE"), src
            rep = (await api(ivs.get_participant, stageArn=b["arn"], sessionId=dst_session,
                             participantId=pid))["participant"]
            assert (rep["state"], rep.get("replicationType"), rep.get("replicationState")) == \
                ("CONNECTED", "REPLICA", "ACTIVE"), rep
            b_names = names(await events_of(ivs, b["arn"], dst_session, pid))
            assert "LEFT" not in b_names and b_names.count("JOINED") == 1, (
                f"the replica kept its place in B, its events there: {b_names}")
            a_names = names(await events_of(ivs, a["arn"], src_session, pid))
            assert "REPLICATION_STOPPED" not in a_names and a_names.count("REPLICATION_STARTED") == 1, a_names
        finally:
            await c.close()

    try:
        arun(go(), timeout=60)
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()


def test_publisher_not_returning_stops_the_replication_when_the_window_ends(ivs, make_stage, token_for, arun):
    window = 2
    a, b = make_stage("source"), make_stage("destination")
    tp = token_for(a, "host", ("PUBLISH",))
    tv = token_for(b, "viewer", ("SUBSCRIBE",))
    pid = tp["participantId"]

    async def go():
        c = Cleanup()
        try:
            p = await publish(c, a, tp, "publisher (red)", colour=RED, tone=440.0)
            src_session = await asyncio.to_thread(active_session, ivs, a["arn"])
            v = await Viewer.open(c, b, tv, "viewer in B")
            dst_session = await asyncio.to_thread(active_session, ivs, b["arn"])
            mark = len(v.events.messages)
            await api(ivs.start_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
                      participantId=pid, reconnectWindowSeconds=window)
            await v.watch(c, pid, start=mark, frames=15)
            mark = len(v.events.messages)

            t_drop = time.monotonic()
            await drop_without_goodbye(p)
            await asyncio.sleep(window / 2)
            got = await replica_state(ivs, a["arn"], pid, b["arn"])
            assert got == ["ACTIVE"], f"{window / 2:.1f}s into a {window} s window: {got}"
            t_stopped = await wait_stopped(ivs, a["arn"], pid, b["arn"], window + 3.0)
            assert t_stopped - t_drop >= window - 0.3, (
                f"the replication stopped {t_stopped - t_drop:.2f}s after the drop, before its {window} s window")
            await expect_stopped(ivs, src=a, dst=b, pid=pid, src_session=src_session, dst_session=dst_session,
                                 t0=t_drop + window, within=2.0, viewer=v, mark=mark)
            await wait_session_ended(ivs, a["arn"], 3.0, "the window is over and nobody is in A")
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_each_replication_has_its_own_window(ivs, make_stage, token_for, arun):
    """A→B with window 0 and A→C with window 10: when the publisher drops, A→B stops at
    once while A→C holds (and holds A's session open); stopping A→C inside its window
    lets A's session end."""
    a, b, cc = make_stage("source"), make_stage("no-window"), make_stage("windowed")
    tp = token_for(a, "host", ("PUBLISH",))
    tvb, tvc = token_for(b, "viewer-b", ("SUBSCRIBE",)), token_for(cc, "viewer-c", ("SUBSCRIBE",))
    pid = tp["participantId"]

    async def go():
        c = Cleanup()
        try:
            p = await publish(c, a, tp, "publisher (red)", colour=RED, tone=440.0)
            src_session = await asyncio.to_thread(active_session, ivs, a["arn"])
            vb, vc = await Viewer.open(c, b, tvb, "viewer in B"), await Viewer.open(c, cc, tvc, "viewer in C")
            sessions = {}
            for dest, window in ((b, 0), (cc, 10)):
                await api(ivs.start_participant_replication, sourceStageArn=a["arn"], destinationStageArn=dest["arn"],
                          participantId=pid, reconnectWindowSeconds=window)
                sessions[dest["arn"]] = await asyncio.to_thread(active_session, ivs, dest["arn"])
            for v in (vb, vc):
                await v.watch(c, pid, frames=15)
                v.mark = len(v.events.messages)

            t_drop = time.monotonic()
            await drop_without_goodbye(p)
            await expect_stopped(ivs, src=a, dst=b, pid=pid, src_session=src_session, dst_session=sessions[b["arn"]],
                                 t0=t_drop, viewer=vb, mark=vb.mark, source_still_replicating=True)
            assert await replica_state(ivs, a["arn"], pid, cc["arn"]) == ["ACTIVE"]
            assert await asyncio.to_thread(active_session, ivs, a["arn"]) == src_session, (
                "A→C's window holds A's session open")

            t_stop = time.monotonic()
            await api(ivs.stop_participant_replication, sourceStageArn=a["arn"], destinationStageArn=cc["arn"],
                      participantId=pid)
            await expect_stopped(ivs, src=a, dst=cc, pid=pid, src_session=src_session,
                                 dst_session=sessions[cc["arn"]], t0=t_stop, viewer=vc, mark=vc.mark)
            await wait_session_ended(ivs, a["arn"], 3.0, "no replication window holds A any more")
        finally:
            await c.close()

    arun(go(), timeout=60)
