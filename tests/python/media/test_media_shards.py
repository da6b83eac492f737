"""Peers spread over the media plane's forwarding threads (`--media-threads`).

A source's publisher lives on the source's home shard; its subscribers go to the
least-loaded shard, so one audience spreads over every core and a packet crosses
to another shard once, whatever its number of subscribers there. These tests run a server with three shards and check, with
real aiortc peers, that (1) every shard holds peers, (2) every subscriber, on
whichever shard, decodes *its* publisher, and (3) every shard's thread does the
work (its CPU time grows), which is what "stages spread over cores" means.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import requests

from media_peers import Cleanup, Publisher, Subscriber, colour_distance

SHARDS = 3
RED, BLUE = (210, 40, 40), (40, 60, 210)
SHARD_GAUGE = re.compile(r'^onstage_media_shard_peers\{shard="(\d+)"\} (\S+)$')


def shard_peers(server) -> dict[int, float]:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return {int(m.group(1)): float(m.group(2)) for m in map(SHARD_GAUGE.match, text.splitlines()) if m}


def media_thread_cpu(pid: int) -> dict[str, int]:
    """CPU ticks (user + system) of each onstage-media-N thread."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except OSError:
            continue
        if re.fullmatch(r"onstage-media-\d+", comm):
            fields = stat[stat.rindex(")") + 2:].split()
            out[comm] = int(fields[11]) + int(fields[12])
    return out


def test_stages_and_subscribers_spread_over_shards(server_factory, arun):
    server = server_factory(extra_args=["--media-threads", str(SHARDS)])
    ivs = server.client()
    stages = [ivs.create_stage(name=f"shards-{i}")["stage"] for i in range(2)]

    def token(stage, user, caps):
        return ivs.create_participant_token(stageArn=stage["arn"], userId=user,
                                            capabilities=list(caps))["participantToken"]

    async def go():
        c = Cleanup()
        try:
            pubs, subs = [], []
            for stage, colour, tone in ((stages[0], RED, 440.0), (stages[1], BLUE, 1000.0)):
                tp = token(stage, "host", ("PUBLISH",))
                p = c.add(Publisher(f"host of {stage['name']}", colour=colour, tone=tone, video_codec="video/VP8"))
                resp = await p.publish(stage["endpoints"]["whip"], tp["token"])
                assert resp.status_code == 201, resp.text
                pubs.append((stage, tp, colour, p))
            await asyncio.gather(*(p.wait_connected() for *_, p in pubs))
            for stage, tp, colour, _ in pubs:
                for i in range(3):
                    tv = token(stage, f"viewer-{i}", ("SUBSCRIBE",))
                    s = c.add(Subscriber(f"viewer {i} of {stage['name']}"))
                    resp = await s.subscribe(stage["endpoints"]["whip"], tp["participantId"], tv["token"])
                    assert resp.status_code == 201, resp.text
                    subs.append((s, colour))
            await asyncio.gather(*(s.wait_connected() for s, _ in subs))
            threads = media_thread_names(server.proc.pid)
            # (Linux keeps 15 characters of a thread name: "onstage-media-rx" reads "onstage-media-r".)
            assert "onstage-media-r" in threads, f"with {SHARDS} shards the receive loop has its own thread: {threads}"
            before = media_thread_cpu(server.proc.pid)
            for s, _ in subs:
                await s.wait_video(30, timeout=15)
            await asyncio.sleep(2.0)
            after = media_thread_cpu(server.proc.pid)

            peers = shard_peers(server)
            assert sorted(peers) == list(range(SHARDS)), f"shard gauges: {peers}"
            assert sum(peers.values()) == 8, f"2 publishers + 6 subscribers, gauges say {peers}"
            assert all(v >= 1 for v in peers.values()), f"a shard holds no peer: {peers}"

            for s, colour in subs:
                mean = s.video.mean_colour(last=10)
                assert mean is not None and colour_distance(mean, colour) <= 30, (
                    f"{s.label}: decoded mean colour {None if mean is None else mean.round(1).tolist()}, "
                    f"its publisher draws {colour}")

            assert sorted(after) == [f"onstage-media-{i}" for i in range(SHARDS)], f"media threads: {after}"
            busy = {name: after[name] - before.get(name, 0) for name in after}
            assert all(t > 0 for t in busy.values()), (
                f"every shard thread should have worked while frames flowed; CPU ticks: {busy}")
        finally:
            await c.close()

    arun(go(), timeout=90)


def media_thread_names(pid: int) -> set[str]:
    names = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:
            continue
    return {n for n in names if n.startswith("onstage-media")}


def test_one_shard_still_forwards(server_factory, arun, token_for):
    """--media-threads 1 is the single-loop layout: everything on one shard, the
    receive loop included (no thread of its own to hand datagrams across)."""
    server = server_factory(extra_args=["--media-threads", "1"])
    ivs = server.client()
    stage = ivs.create_stage(name="one-shard")["stage"]
    tp = ivs.create_participant_token(stageArn=stage["arn"], userId="host", capabilities=["PUBLISH"])["participantToken"]
    tv = ivs.create_participant_token(stageArn=stage["arn"], userId="v", capabilities=["SUBSCRIBE"])["participantToken"]

    async def go():
        c = Cleanup()
        try:
            p = c.add(Publisher("host", colour=RED, tone=440.0, video_codec="video/VP8"))
            assert (await p.publish(stage["endpoints"]["whip"], tp["token"])).status_code == 201
            await p.wait_connected()
            s = c.add(Subscriber("viewer"))
            assert (await s.subscribe(stage["endpoints"]["whip"], tp["participantId"], tv["token"])).status_code == 201
            await s.wait_connected()
            await s.wait_video(20, timeout=15)
            # The gauges are refreshed once a second.
            peers = {}
            for _ in range(30):
                peers = shard_peers(server)
                if peers == {0: 2.0}:
                    break
                await asyncio.sleep(0.1)
            assert peers == {0: 2.0}, f"one shard, a publisher and a subscriber; gauges say {peers}"
            threads = media_thread_names(server.proc.pid)
            assert threads == {"onstage-media-0"}, f"one shard should be the only media thread: {threads}"
        finally:
            await c.close()

    arun(go(), timeout=60)
