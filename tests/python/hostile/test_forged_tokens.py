"""The forged-token flood of issue 12 at its original size: ~11,000 unauthenticated
WHIP publishes in ~8 s, each with a token whose signature was altered and whose `jti`
is a real participant's id. Such tokens name whoever their author likes, so none of
them may write to the stage's event log (DECISIONS: "Refusals are recorded only for
genuine tokens"), the database must not grow, and real peers on the same stage must
keep publishing, subscribing and joining while it goes on.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import requests

from helpers import DEV
from media_peers import (
    Cleanup,
    EventsClient,
    Publisher,
    Subscriber,
    active_session,
    describe,
    forge_signature,
    participant_events,
    participants_by_id,
)

FLOOD = Path(__file__).with_name("forge_flood.py")
REQUESTS = 11_000
CONNECTIONS = 32
FLOOD_TIME_LIMIT = 90.0
# What the database may grow by while the flood runs (the real peers' own events and
# a WAL frame or two); the unfixed server grew it by ~7 MB.
MAX_GROWTH_BYTES = 256 * 1024


def db_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("onstage.db*") if p.is_file())


def metric(server, name: str) -> float:
    for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_forged_token_flood_writes_nothing_and_real_peers_carry_on(server_factory, arun):
    srv = server_factory()
    ivs = srv.client(DEV)
    stage = ivs.create_stage(name="flooded")["stage"]
    stage_id = stage["arn"].rsplit("/", 1)[1]
    whip, events_url = stage["endpoints"]["whip"], stage["endpoints"]["events"]

    def token(user: str, caps=("PUBLISH", "SUBSCRIBE")) -> dict:
        return ivs.create_participant_token(stageArn=stage["arn"], userId=user,
                                            capabilities=list(caps))["participantToken"]

    witness, victim, viewer, latecomer = (token(u) for u in ("witness", "victim", "viewer", "latecomer"))
    forged = forge_signature(victim["token"])

    async def go():
        c = Cleanup()
        try:
            ev = c.add(EventsClient("witness"))
            await ev.connect(events_url, stage_id, witness["token"])
            await ev.wait_state(lambda st: witness["participantId"] in participants_by_id(st), 5,
                                what="the witness in STAGE_STATE")
            sid = active_session(ivs, stage["arn"])
            assert sid, "no session while the witness holds the events socket"
            pub = c.add(Publisher("victim publishing", colour=(0, 160, 0), tone=440.0))
            resp = await pub.publish(whip, victim["token"])
            assert resp.status_code == 201, describe(resp)
            await pub.wait_connected()

            forged_before = metric(srv, "onstage_participant_tokens_forged_total")
            size_before = db_bytes(srv.data_dir)
            host, port = srv.host.split(":")
            flood = await asyncio.create_subprocess_exec(
                sys.executable, str(FLOOD), host, port, forged, str(REQUESTS), str(CONNECTIONS),
                str(FLOOD_TIME_LIMIT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                # Under the flood: a subscriber of the victim gets its media, and a
                # newcomer's publish is answered.
                await asyncio.sleep(0.5)
                sub = c.add(Subscriber("viewer under the flood"))
                resp = await sub.subscribe(whip, victim["participantId"], viewer["token"])
                assert resp.status_code == 201, describe(resp)
                await sub.wait_video(30, timeout=15)
                late = c.add(Publisher("latecomer under the flood", tone=660.0))
                t0 = time.monotonic()
                resp = await late.publish(whip, latecomer["token"])
                join_seconds = time.monotonic() - t0
                assert resp.status_code == 201, describe(resp)
                flood_running = flood.returncode is None
                out, err = await asyncio.wait_for(flood.communicate(), FLOOD_TIME_LIMIT + 15)
            finally:
                if flood.returncode is None:
                    flood.kill()
                    await flood.wait()
            report = json.loads(out.decode())
            print(f"\nflood: {report}; real publish under it answered in {join_seconds * 1000:.0f} ms "
                  f"(flood still running then: {flood_running})")
            assert report["errors"] == [], (report, err.decode()[-2000:])
            assert report["statuses"] == {"401": REQUESTS}, report

            # Nothing was written under the victim's id (or anyone's) by the flood ...
            for pid in (victim["participantId"], witness["participantId"]):
                names = [e["name"] for e in participant_events(ivs, stage["arn"], sid, pid)]
                assert "JOIN_ERROR" not in names, (pid, names)
            # ... the refusals were counted ...
            assert metric(srv, "onstage_participant_tokens_forged_total") - forged_before >= REQUESTS
            # ... and the database did not grow by more than the real peers' events.
            growth = db_bytes(srv.data_dir) - size_before
            print(f"database growth during the flood: {growth} bytes")
            assert growth <= MAX_GROWTH_BYTES, growth
        finally:
            await c.close()

    arun(go(), timeout=200)
