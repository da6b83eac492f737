"""Crash safety (BEHAVIOUR §7): `kill -9` the server again and again under a steady
stream of writes, restart it on the same data directory, and check that every write
it acknowledged with a 2xx (or, for the events socket, a 101) is there.

The writes: CreateStage, TagResource, CreateParticipantToken (acknowledged tokens
must still verify, so the signing key must have survived), and real joins through
the stage-events socket, whose `JOINED` is recorded before the socket is accepted
(DECISIONS: "What an acknowledged write is").
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import requests

from helpers import DEV
from media_peers import EventsClient

KILLS = 12
# How long the writers run between a start and its kill (seconds, drawn at random).
RUN_BETWEEN_KILLS = (0.6, 1.6)


def hard_kill(srv) -> None:
    """SIGKILL, no shutdown: what a crash or an OOM kill does."""
    srv.proc.kill()
    srv.proc.wait(timeout=10)
    srv.proc = None
    if srv._log is not None:
        srv._log.close()
        srv._log = None


def start_again(srv) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            srv.start()
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Acked:
    def __init__(self):
        self.stages: list[str] = []
        self.tags: list[tuple[str, str, str]] = []
        self.tokens: list[dict] = []
        self.joins: list[str] = []


async def stage_writer(ivs, acked: Acked, stop: asyncio.Event, n: itertools.count) -> None:
    while not stop.is_set():
        i = next(n)
        try:
            arn = (await asyncio.to_thread(ivs.create_stage, name=f"crash-{i}"))["stage"]["arn"]
            acked.stages.append(arn)
            key, value = f"k{i}", f"v{i}"
            await asyncio.to_thread(ivs.tag_resource, resourceArn=arn, tags={key: value})
            acked.tags.append((arn, key, value))
        except Exception:
            await asyncio.sleep(0.05)


async def token_writer(ivs, stage_arn: str, acked: Acked, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            t = (await asyncio.to_thread(ivs.create_participant_token, stageArn=stage_arn,
                                         capabilities=["PUBLISH", "SUBSCRIBE"]))["participantToken"]
            acked.tokens.append(t)
        except Exception:
            await asyncio.sleep(0.05)


async def joiner(ivs, stage: dict, acked: Acked, stop: asyncio.Event) -> None:
    stage_id = stage["arn"].rsplit("/", 1)[1]
    while not stop.is_set():
        ev = EventsClient("joiner")
        try:
            t = (await asyncio.to_thread(ivs.create_participant_token, stageArn=stage["arn"],
                                         capabilities=["SUBSCRIBE"]))["participantToken"]
            await ev.connect(stage["endpoints"]["events"], stage_id, t["token"])
            acked.joins.append(t["participantId"])
        except Exception:
            await asyncio.sleep(0.05)
        finally:
            if ev.ws is not None:
                try:
                    await asyncio.wait_for(ev.close(), 2)
                except Exception:
                    pass


def all_participants(ivs, stage_arn: str) -> dict[str, str]:
    """participant id → session id, over every session of the stage."""
    out = {}
    sessions, token = [], None
    while True:
        page = ivs.list_stage_sessions(stageArn=stage_arn, **({"nextToken": token} if token else {}))
        sessions += [s["sessionId"] for s in page["stageSessions"]]
        token = page.get("nextToken")
        if not token:
            break
    for sid in sessions:
        token = None
        while True:
            page = ivs.list_participants(stageArn=stage_arn, sessionId=sid,
                                         **({"nextToken": token} if token else {}))
            for p in page["participants"]:
                out[p["participantId"]] = sid
            token = page.get("nextToken")
            if not token:
                break
    return out


def test_no_acknowledged_write_is_lost_across_kill_9(server_factory, arun):
    srv = server_factory()
    ivs = srv.client(DEV)
    join_stage = ivs.create_stage(name="joins")["stage"]
    jwks = requests.get(f"{srv.url}/.well-known/jwks.json", timeout=5).json()
    acked = Acked()
    rng = random.Random(12)

    async def go():
        n = itertools.count()
        for kill in range(KILLS):
            stop = asyncio.Event()
            tasks = [asyncio.ensure_future(stage_writer(ivs, acked, stop, n)),
                     asyncio.ensure_future(token_writer(ivs, join_stage["arn"], acked, stop)),
                     asyncio.ensure_future(joiner(ivs, join_stage, acked, stop))]
            await asyncio.sleep(rng.uniform(*RUN_BETWEEN_KILLS))
            # Killed with requests in flight: the writers are still running.
            await asyncio.to_thread(hard_kill, srv)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            await asyncio.to_thread(start_again, srv)

    arun(go(), timeout=150)

    print(f"\n{KILLS} kills; acknowledged: {len(acked.stages)} stages, {len(acked.tags)} tags, "
          f"{len(acked.tokens)} tokens, {len(acked.joins)} joins")
    assert acked.stages and acked.tags and acked.tokens and acked.joins, "a writer never got through"

    lost_stages = [a for a in acked.stages if not _exists(ivs, a)]
    assert lost_stages == [], f"acknowledged stages lost: {lost_stages}"
    lost_tags = [(a, k) for a, k, v in acked.tags
                 if ivs.list_tags_for_resource(resourceArn=a)["tags"].get(k) != v]
    assert lost_tags == [], f"acknowledged tags lost: {lost_tags}"
    # Tokens are not stored: what must survive is the key that signed them.
    assert requests.get(f"{srv.url}/.well-known/jwks.json", timeout=5).json() == jwks
    participants = all_participants(ivs, join_stage["arn"])
    lost_joins = [p for p in acked.joins if p not in participants]
    assert lost_joins == [], f"acknowledged joins lost: {lost_joins}"
    for pid in acked.joins:
        events = ivs.list_participant_events(stageArn=join_stage["arn"], sessionId=participants[pid],
                                             participantId=pid)["events"]
        assert "JOINED" in [e["name"] for e in events], (pid, events)
    # And a token acknowledged before the last kill still lets its holder in.
    async def still_valid():
        ev = EventsClient("after the crashes")
        await ev.connect(join_stage["endpoints"]["events"], join_stage["arn"].rsplit("/", 1)[1],
                         acked.tokens[-1]["token"])
        await ev.close()

    arun(still_valid(), timeout=20)


def _exists(ivs, arn: str) -> bool:
    try:
        ivs.get_stage(arn=arn)
        return True
    except ivs.exceptions.ResourceNotFoundException:
        return False
