"""The stage-events WebSocket (BEHAVIOUR §4): token as subprotocol, STAGE_STATE on connect
and on every change, PING → PONG."""

from __future__ import annotations

import asyncio

from media_peers import Cleanup, EventsClient, Publisher, describe, participants_by_id


def test_stage_state_follows_a_publisher_joining_and_leaving(stage, token_for, arun):
    whip, events_url = stage["endpoints"]["whip"], stage["endpoints"]["events"]
    stage_id = stage["arn"].rsplit("/", 1)[1]
    to = token_for(stage, "observer", ("SUBSCRIBE",), attributes={"seat": "front"})
    tp = token_for(stage, "speaker", ("PUBLISH",), attributes={"role": "host"})
    obs, pub = to["participantId"], tp["participantId"]

    async def go():
        c = Cleanup()
        try:
            ev = c.add(EventsClient("observer"))
            await ev.connect(events_url, stage_id, to["token"])
            assert ev.ws.subprotocol == to["token"], (
                f"the server did not select the token subprotocol (browsers then drop the socket): "
                f"{ev.ws.subprotocol!r}")
            first = await ev.wait_for(lambda m: True, 5, what="a first message")
            assert first["type"] == "STAGE_STATE", first
            st = first["payload"]
            assert st["stageId"] == stage_id, st
            assert st["sequenceNumber"] == 1, st
            assert st["participants"] == [
                {"id": obs, "userId": "observer", "attributes": {"seat": "front"}, "isPublishing": False, "audioMuted": False, "videoStopped": False}
            ], st

            n = len(ev.messages)
            p = c.add(Publisher("speaker", colour=(200, 200, 40), tone=440.0, video_codec="video/VP8"))
            resp = await p.publish(whip, tp["token"])
            assert resp.status_code == 201, describe(resp)
            st = await ev.wait_state(lambda s: participants_by_id(s).get(pub, {}).get("isPublishing") is True,
                                     10, start=n, what="STAGE_STATE with the speaker publishing")
            assert st["stageId"] == stage_id
            assert participants_by_id(st) == {
                obs: {"id": obs, "userId": "observer", "attributes": {"seat": "front"}, "isPublishing": False,
                      "audioMuted": False, "videoStopped": False},
                pub: {"id": pub, "userId": "speaker", "attributes": {"role": "host"}, "isPublishing": True,
                      "audioMuted": False, "videoStopped": False},
            }, st

            # PING → PONG, with the socket otherwise quiet
            n = len(ev.messages)
            await ev.send({"type": "PING"})
            pong = await ev.wait_for(lambda m: m.get("type") == "PONG", 5, start=n, what="PONG")
            assert pong == {"type": "PONG"}, pong

            n = len(ev.messages)
            r = await p.delete()
            assert r is not None and 200 <= r.status_code < 300, describe(r)
            st = await ev.wait_state(lambda s: pub not in participants_by_id(s), 10, start=n,
                                     what="STAGE_STATE without the speaker")
            assert [x["id"] for x in st["participants"]] == [obs], st
            # the observer's socket stays open throughout
            assert ev.closed_at is None
        finally:
            await c.close()

    arun(go(), timeout=60)


def test_a_second_observer_is_announced_and_its_departure_too(stage, token_for, arun):
    events_url = stage["endpoints"]["events"]
    stage_id = stage["arn"].rsplit("/", 1)[1]
    ta = token_for(stage, "first")
    tb = token_for(stage, "second")

    async def go():
        c = Cleanup()
        try:
            a = c.add(EventsClient("first"))
            await a.connect(events_url, stage_id, ta["token"])
            await a.wait_state(lambda s: ta["participantId"] in participants_by_id(s), 5)
            b = EventsClient("second")
            await b.connect(events_url, stage_id, tb["token"])
            first_b = await b.wait_for(lambda m: True, 5)
            assert first_b["type"] == "STAGE_STATE"
            assert set(participants_by_id(first_b["payload"])) == {ta["participantId"], tb["participantId"]}, first_b
            await a.wait_state(lambda s: tb["participantId"] in participants_by_id(s), 5,
                               what="STAGE_STATE with the second observer")
            n = len(a.messages)
            await b.close()
            st = await a.wait_state(lambda s: tb["participantId"] not in participants_by_id(s), 5, start=n,
                                    what="STAGE_STATE after the second observer closed its socket")
            assert set(participants_by_id(st)) == {ta["participantId"]}, st
        finally:
            await c.close()

    arun(go(), timeout=30)


def test_second_events_socket_with_the_same_token_replaces_the_first(stage, token_for, arun):
    events_url = stage["endpoints"]["events"]
    stage_id = stage["arn"].rsplit("/", 1)[1]
    t = token_for(stage, "reconnecting")

    async def go():
        c = Cleanup()
        try:
            a = c.add(EventsClient("first socket"))
            await a.connect(events_url, stage_id, t["token"])
            await a.wait_for(lambda m: m.get("type") == "STAGE_STATE", 5)
            b = c.add(EventsClient("second socket"))
            await b.connect(events_url, stage_id, t["token"])
            st = await b.wait_state(lambda s: True, 5)
            assert [x["id"] for x in st["participants"]] == [t["participantId"]], st
            for _ in range(50):
                if a.closed_at is not None:
                    break
                await asyncio.sleep(0.1)
            assert a.closed_at is not None, "the replaced events socket is still open 5 s later"
            n = len(b.messages)
            await b.send({"type": "PING"})
            await b.wait_for(lambda m: m.get("type") == "PONG", 5, start=n, what="PONG on the new socket")
        finally:
            await c.close()

    arun(go(), timeout=30)
