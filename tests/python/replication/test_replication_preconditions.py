"""StartParticipantReplication's preconditions, in the order of BEHAVIOUR §6, each with
its exact error, against stages with real (audio-only aiortc) publishers:

1. input valid, source ≠ destination → ValidationException
2. both stages exist → ResourceNotFoundException naming which
3. the participant is CONNECTED and publishing in the source → ConflictException
   "participant <id> is not publishing in <stage>"
4. not already replicated there → ConflictException; not a REPLICA in the source
   → ValidationException
5. ≤ 5 active per participant (see test_replication_media), a publisher slot free in
   the destination (a replica counts toward its 12) → ServiceQuotaExceededException

Where two preconditions fail at once, the earlier one is the answer. A refused start
leaves no record.
"""

from __future__ import annotations

import asyncio

from media_peers import Cleanup, EventsClient, Publisher, describe, error_event, participants_by_id
from replication_peers import (
    active_session,
    all_replicas,
    api,
    publish,
    refused,
    stage_id,
)

TONES = [300.0 + 50 * i for i in range(16)]


def test_preconditions_in_order_with_their_errors(ivs, make_stage, token_for, arun):
    a, b, c_stage = make_stage("source"), make_stage("destination"), make_stage("full-destination")
    missing = a["arn"].rsplit("/", 1)[0] + "/Zz0000000077"
    missing2 = a["arn"].rsplit("/", 1)[0] + "/Zz0000000078"
    tp = token_for(a, "p", ("PUBLISH",))
    ts = token_for(a, "s", ("PUBLISH",))
    tt = token_for(a, "t", ("PUBLISH",))
    tq = token_for(a, "q-events-only", ("PUBLISH", "SUBSCRIBE"))  # connected, not publishing
    tnever = token_for(a, "never-joined", ("PUBLISH",))
    tr = token_for(b, "r-publishes-in-b", ("PUBLISH",))
    locals_c = [token_for(c_stage, f"local-{i}", ("PUBLISH",)) for i in range(10)]
    t13 = token_for(c_stage, "thirteenth", ("PUBLISH",))
    tw = token_for(c_stage, "witness", ())
    pid, sid_, tid = tp["participantId"], ts["participantId"], tt["participantId"]
    qid, rid = tq["participantId"], tr["participantId"]

    def start(src, dst, participant, **kw):
        return api(ivs.start_participant_replication, sourceStageArn=src, destinationStageArn=dst,
                   participantId=participant, **kw)

    async def go():
        c = Cleanup()
        try:
            for t, tone in zip((tp, ts, tt), TONES):
                await publish(c, a, t, f"publisher {t['userId']} in A", tone=tone)
            await publish(c, b, tr, "publisher r in B", tone=TONES[3])
            q_events = c.add(EventsClient("q"))
            await q_events.connect(a["endpoints"]["events"], stage_id(a), tq["token"])
            await q_events.wait_state(lambda st: participants_by_id(st).get(qid, {}).get("isPublishing") is False
                                      and all(participants_by_id(st).get(x, {}).get("isPublishing")
                                              for x in (pid, sid_, tid)), 5,
                                      what="STAGE_STATE of A with q connected and p, s, t publishing")
            SE = "ServiceQuotaExceededException"

            # 1. validation, before anything else
            await refused(ivs.start_participant_replication, "ValidationException",
                          any_of=("destinationStageArn", "sourceStageArn"),
                          sourceStageArn=a["arn"], destinationStageArn=a["arn"], participantId=pid)
            await refused(ivs.start_participant_replication, "ValidationException",
                          any_of=("destinationStageArn", "sourceStageArn"),
                          sourceStageArn=missing, destinationStageArn=missing, participantId=pid)
            await refused(ivs.start_participant_replication, "ValidationException", "reconnectWindowSeconds",
                          sourceStageArn=missing, destinationStageArn=b["arn"], participantId=pid,
                          reconnectWindowSeconds=301)
            await refused(ivs.start_participant_replication, "ValidationException", "participantId",
                          sourceStageArn=a["arn"], destinationStageArn=b["arn"], participantId="not valid!")
            await refused(ivs.start_participant_replication, "ValidationException", "attributes",
                          sourceStageArn=a["arn"], destinationStageArn=b["arn"], participantId=pid,
                          attributes={"k": "v" * 1024})

            # 2. the stages exist; the message says which one does not
            await refused(ivs.start_participant_replication, "ResourceNotFoundException", stage_id(missing),
                          sourceStageArn=missing, destinationStageArn=b["arn"], participantId=pid)
            await refused(ivs.start_participant_replication, "ResourceNotFoundException", stage_id(missing),
                          sourceStageArn=a["arn"], destinationStageArn=missing, participantId=pid)
            await refused(ivs.start_participant_replication, "ResourceNotFoundException",
                          any_of=(stage_id(missing), stage_id(missing2)),
                          sourceStageArn=missing, destinationStageArn=missing2, participantId=pid)
            # … before "not publishing"
            await refused(ivs.start_participant_replication, "ResourceNotFoundException", stage_id(missing),
                          sourceStageArn=a["arn"], destinationStageArn=missing, participantId=qid)

            # 3. connected and publishing in the source
            for who in (qid, tnever["participantId"], "abcdefabcdef", rid):
                await refused(ivs.start_participant_replication, "ConflictException", who, "not publishing",
                              any_of=(a["arn"], stage_id(a)),
                              sourceStageArn=a["arn"], destinationStageArn=c_stage["arn"], participantId=who)

            # 4. not already replicated there; not a replica in the source
            await start(a["arn"], b["arn"], pid)
            await refused(ivs.start_participant_replication, "ConflictException", pid,
                          sourceStageArn=a["arn"], destinationStageArn=b["arn"], participantId=pid)
            await refused(ivs.start_participant_replication, "ConflictException", pid,
                          sourceStageArn=a["arn"], destinationStageArn=b["arn"], participantId=pid,
                          reconnectWindowSeconds=30, attributes={"other": "attributes"})
            for onward in (c_stage["arn"], a["arn"]):  # a chain, and a loop back to the source
                await refused(ivs.start_participant_replication, "ValidationException",
                              sourceStageArn=b["arn"], destinationStageArn=onward, participantId=pid)

            # 5. a publisher slot in the destination: 10 local publishers + 2 replicas fill C
            witness = c.add(EventsClient("witness in C"))
            await witness.connect(c_stage["endpoints"]["events"], stage_id(c_stage), tw["token"])
            locals_ = await asyncio.gather(*(publish(c, c_stage, t, f"local {i} in C", tone=TONES[4 + i])
                                             for i, t in enumerate(locals_c)))
            assert len(locals_) == 10
            await start(a["arn"], c_stage["arn"], pid)
            await start(a["arn"], c_stage["arn"], sid_)
            await witness.wait_state(lambda st: sum(p["isPublishing"] for p in st["participants"]) == 12, 5,
                                     what="12 publishers (2 of them replicas) in C's STAGE_STATE")
            sid_c = await asyncio.to_thread(active_session, ivs, c_stage["arn"])
            pubs = (await api(ivs.list_participants, stageArn=c_stage["arn"], sessionId=sid_c,
                              filterByPublished=True, maxResults=100))["participants"]
            assert len(pubs) == 12, pubs
            await refused(ivs.start_participant_replication, SE,
                          sourceStageArn=a["arn"], destinationStageArn=c_stage["arn"], participantId=tid)
            # … after "already replicated there" and "not publishing"
            await refused(ivs.start_participant_replication, "ConflictException", pid,
                          sourceStageArn=a["arn"], destinationStageArn=c_stage["arn"], participantId=pid)
            await refused(ivs.start_participant_replication, "ConflictException", qid,
                          sourceStageArn=a["arn"], destinationStageArn=c_stage["arn"], participantId=qid)
            # a replica also takes a local publisher's slot: the 13th local publish is refused
            p13 = c.add(Publisher("13th publisher in C", tone=TONES[15]))
            r = await p13.publish(c_stage["endpoints"]["whip"], t13["token"])
            assert r.status_code == 403, f"a 13th publish into C (10 local + 2 replicas): {describe(r)}"
            await error_event(ivs, c_stage["arn"], sid_c, t13["participantId"], "PUBLISH_ERROR", "QUOTA_EXCEEDED")

            # a freed slot (one replication stopped) lets the refused one in
            await api(ivs.stop_participant_replication, sourceStageArn=a["arn"],
                      destinationStageArn=c_stage["arn"], participantId=sid_)
            await start(a["arn"], c_stage["arn"], tid)

            # refused starts left no record
            for who in (qid, rid, tnever["participantId"], "abcdefabcdef"):
                got = await asyncio.to_thread(all_replicas, ivs, a["arn"], who)
                assert got == [], f"a refused start left records for {who}: {got}"
            got = await asyncio.to_thread(all_replicas, ivs, b["arn"], pid)
            assert got == [], f"the refused replica-of-a-replica left records: {got}"
            got = sorted((r["destinationStageArn"], r["replicationState"])
                         for r in await asyncio.to_thread(all_replicas, ivs, a["arn"], pid))
            assert got == sorted([(b["arn"], "ACTIVE"), (c_stage["arn"], "ACTIVE")]), got
            got = [(r["destinationStageArn"], r["replicationState"])
                   for r in await asyncio.to_thread(all_replicas, ivs, a["arn"], tid)]
            assert got == [(c_stage["arn"], "ACTIVE")], f"t's records (one refused start, one accepted): {got}"
        finally:
            await c.close()

    arun(go(), timeout=90)
