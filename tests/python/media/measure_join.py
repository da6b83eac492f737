#!/usr/bin/env python3
"""Join time: publisher's WHIP POST → first decoded frame at a subscriber that was
already connected to the stage (holding the events socket, waiting for the publisher
to appear with isPublishing, then subscribing as a client does).

Not a test: run it by hand and record the JSON it prints (docs/PERFORMANCE.md).

    .venv/bin/python tests/python/media/measure_join.py                 # starts its own onstage
    .venv/bin/python tests/python/media/measure_join.py --joins 50 --codec H264
    ONSTAGE_BIN=target/release/onstage .venv/bin/python tests/python/media/measure_join.py
    .venv/bin/python tests/python/media/measure_join.py --endpoint http://127.0.0.1:7700   # a running server

Each join uses a fresh publisher token; joins run one after another, and each waits
until the previous publisher has left. Times are milliseconds from the start of the
publisher's POST (the publisher's offer, with its ICE candidates, is ready before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import media_peers  # noqa: E402
from media_peers import EventsClient, Publisher, Subscriber, describe, participants_by_id  # noqa: E402


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def summary(xs: list[float]) -> dict:
    return {"p50": round(percentile(xs, 50), 1), "p95": round(percentile(xs, 95), 1),
            "min": round(min(xs), 1), "max": round(max(xs), 1), "mean": round(statistics.fmean(xs), 1)}


async def one_join(i: int, stage: dict, pub_token: dict, viewer: dict, ev: EventsClient, codec: str) -> dict:
    whip = stage["endpoints"]["whip"]
    pid = pub_token["participantId"]
    colour = (200, 40 + (i * 37) % 160, 40)
    pub = Publisher(f"publisher {i}", colour=colour, tone=440.0, video_codec=f"video/{codec}")
    sub: Subscriber | None = None
    try:
        t_offer = time.monotonic()
        await pub.make_offer()
        offer_ms = (time.monotonic() - t_offer) * 1000
        mark = len(ev.messages)

        async def viewer_side():
            nonlocal sub
            await ev.wait_state(lambda s: participants_by_id(s).get(pid, {}).get("isPublishing") is True,
                                15, start=mark, what=f"{pid} publishing")
            t_event = time.monotonic()
            sub = Subscriber(f"subscriber {i}")
            resp = await sub.subscribe(whip, pid, viewer["token"])
            if resp.status_code != 201:
                raise RuntimeError(f"subscribe: {describe(resp)}")
            t_sub = sub.post_done
            await sub.wait_connected(15)
            t_conn = time.monotonic()
            await sub.wait_video(1, timeout=15)
            return t_event, t_sub, t_conn, sub.video.arrivals[0]

        t0 = time.monotonic()
        viewer_task = asyncio.ensure_future(viewer_side())
        resp = await pub.post_offer(whip, pub_token["token"])
        t_post = pub.post_done
        if resp.status_code != 201:
            viewer_task.cancel()
            raise RuntimeError(f"publish: {describe(resp)}")
        t_event, t_sub, t_conn, t_frame = await viewer_task
        ms = lambda t: round((t - t0) * 1000, 1)
        return {"offer_ms": round(offer_ms, 1), "publish_answered_ms": ms(t_post), "is_publishing_event_ms": ms(t_event),
                "subscribe_answered_ms": ms(t_sub), "subscriber_connected_ms": ms(t_conn),
                "first_frame_ms": ms(t_frame)}
    finally:
        if sub is not None:
            await sub.close()
        published = pub.location is not None
        mark = len(ev.messages)
        await pub.close()
        if published:
            await ev.wait_state(lambda s: pid not in participants_by_id(s), 15, start=mark, what=f"{pid} gone")




async def measure(ivs, joins: int, codec: str, warmup: int) -> dict:
    stage = ivs.create_stage(name="measure-join")["stage"]
    stage_id = stage["arn"].rsplit("/", 1)[1]
    try:
        viewer = ivs.create_participant_token(stageArn=stage["arn"], userId="viewer",
                                              capabilities=["SUBSCRIBE"])["participantToken"]
        tokens = [ivs.create_participant_token(stageArn=stage["arn"], userId=f"publisher-{i}",
                                               capabilities=["PUBLISH"])["participantToken"]
                  for i in range(joins + warmup)]
        ev = EventsClient("viewer")
        await ev.connect(stage["endpoints"]["events"], stage_id, viewer["token"])
        samples = []
        try:
            for i, t in enumerate(tokens):
                r = await asyncio.wait_for(one_join(i, stage, t, viewer, ev, codec), 60)
                if i >= warmup:
                    samples.append(r)
                print(f"join {i + 1}/{len(tokens)}{' (warm-up)' if i < warmup else ''}: "
                      f"first frame {r['first_frame_ms']} ms", file=sys.stderr)
                await asyncio.sleep(0.2)
        finally:
            await ev.close()
    finally:
        ivs.delete_stage(arn=stage["arn"])
    keys = ["publish_answered_ms", "is_publishing_event_ms", "subscribe_answered_ms",
            "subscriber_connected_ms", "first_frame_ms"]
    return {
        "measure": "publisher WHIP POST -> first decoded video frame at an already-connected subscriber",
        "joins": len(samples), "warmup": warmup, "codec": codec, "resolution": "320x240@30",
        "first_frame_ms": summary([s["first_frame_ms"] for s in samples]),
        "breakdown_p50_ms": {k: round(percentile([s[k] for s in samples], 50), 1) for k in keys},
        "offer_creation_ms_p50": round(percentile([s["offer_ms"] for s in samples], 50), 1),
        "samples": samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--joins", type=int, default=25, help="measured joins (≥ 20 for p95) [25]")
    ap.add_argument("--warmup", type=int, default=2, help="joins run first and not counted [2]")
    ap.add_argument("--codec", choices=["VP8", "H264"], default="VP8")
    ap.add_argument("--endpoint", help="a running onstage (API base URL); default: start one")
    ap.add_argument("--access-key", default="onstage")
    ap.add_argument("--secret-key", default="onstage-secret")
    args = ap.parse_args()

    media_peers.use_loopback_ice()
    import boto3
    from botocore.config import Config

    server, tmp = None, None
    endpoint = args.endpoint
    binary = None
    if endpoint is None:
        from conftest import Server  # the test suite's server spawner (tests/python/conftest.py)
        tmp = Path(tempfile.mkdtemp(prefix="onstage-measure-"))
        server = Server(tmp / "data").start()
        endpoint = server.url
        binary = os.environ.get("ONSTAGE_BIN", "target/debug/onstage")
    try:
        ivs = boto3.client("ivs-realtime", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id=args.access_key, aws_secret_access_key=args.secret_key,
                           config=Config(retries={"max_attempts": 1}))
        result = asyncio.run(measure(ivs, args.joins, args.codec, args.warmup))
        result["server"] = {"endpoint": endpoint, "binary": binary}
        result["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
        print(json.dumps(result, indent=2))
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
