"""A restart ends live media: every replication the server finds ACTIVE at start-up
becomes STOPPED (BEHAVIOUR §6), whatever its reconnect window, both after an orderly stop
(SIGTERM) and after a crash (SIGKILL). The records survive; a new Start works."""

from __future__ import annotations

import asyncio
import signal

import pytest

from media_peers import Cleanup
from replication_peers import (
    RED,
    active_session,
    all_replicas,
    api,
    publish,
)


@pytest.fixture
def own_server(server_factory):
    return server_factory()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_turns_active_replications_into_stopped(own_server, arun, how):
    s = own_server
    ivs = s.client()
    a = ivs.create_stage(name="restart-source")["stage"]
    b = ivs.create_stage(name="restart-destination")["stage"]
    tp = ivs.create_participant_token(stageArn=a["arn"], userId="host", capabilities=["PUBLISH"])["participantToken"]
    pid = tp["participantId"]

    def restart():
        if how == "sigkill":
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(timeout=10)
        s.restart()

    async def go():
        c = Cleanup()
        try:
            await publish(c, a, tp, "publisher before the restart", colour=RED, tone=440.0)
            src_session = await asyncio.to_thread(active_session, ivs, a["arn"])
            await api(ivs.start_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
                      participantId=pid, reconnectWindowSeconds=300)
            dst_session = await asyncio.to_thread(active_session, ivs, b["arn"])
            before = await asyncio.to_thread(all_replicas, ivs, a["arn"], pid)
            assert [r["replicationState"] for r in before] == ["ACTIVE"], before

            await asyncio.to_thread(restart)

            after = await asyncio.to_thread(all_replicas, ivs, a["arn"], pid)
            assert after == [{**before[0], "replicationState": "STOPPED"}], (
                f"after a {how} restart, ListParticipantReplicas gives {after} (before: {before})")
            assert after[0]["sourceSessionId"] == src_session and after[0]["destinationSessionId"] == dst_session
            for arn in (a["arn"], b["arn"]):
                assert await asyncio.to_thread(active_session, ivs, arn) is None, f"{arn} still has a live session"
            rep = (await api(ivs.get_participant, stageArn=b["arn"], sessionId=dst_session,
                             participantId=pid))["participant"]
            assert (rep["state"], rep.get("replicationType"), rep.get("replicationState")) == \
                ("DISCONNECTED", "REPLICA", "STOPPED"), f"the replica after the restart: {rep}"
            src = (await api(ivs.get_participant, stageArn=a["arn"], sessionId=src_session,
                             participantId=pid))["participant"]
            assert (src["state"], src.get("replicationType"), src.get("replicationState")) == \
                ("DISCONNECTED", "SOURCE", "STOPPED"), f"the source after the restart: {src}"

            # the old peer is dead; the same token publishes again and replicates again
            for x in list(c.items):
                x.location = None  # its WHIP resource died with the old process
            await c.close()
            await publish(c, a, tp, "publisher after the restart", colour=RED, tone=440.0)
            new_session = await asyncio.to_thread(active_session, ivs, a["arn"])
            assert new_session and new_session != src_session
            await api(ivs.start_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
                      participantId=pid)
            got = sorted(((r["replicationState"], r["sourceSessionId"])
                          for r in await asyncio.to_thread(all_replicas, ivs, a["arn"], pid)))
            assert got == [("ACTIVE", new_session), ("STOPPED", src_session)], got
        finally:
            await c.close()

    arun(go(), timeout=60)
