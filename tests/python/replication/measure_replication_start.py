#!/usr/bin/env python3
"""Replication start latency: StartParticipantReplication's response → first decoded
video frame at a client of the destination stage that was already connected to its
events socket, and subscribes when STAGE_STATE shows the replica publishing (as a
client does). Optionally, the server's CPU cost of one replication next to one extra
local subscriber.

Not a test: run it by hand and record the JSON it prints (docs/PERFORMANCE.md).

    .venv/bin/python tests/python/replication/measure_replication_start.py               # starts its own onstage
    .venv/bin/python tests/python/replication/measure_replication_start.py --runs 50 --codec H264
    .venv/bin/python tests/python/replication/measure_replication_start.py --cpu-seconds 10
    ONSTAGE_BIN=target/release/onstage .venv/bin/python tests/python/replication/measure_replication_start.py
    .venv/bin/python tests/python/replication/measure_replication_start.py --endpoint http://127.0.0.1:7700

One publisher keeps publishing in stage A for the whole measurement; each run starts a
replication A → B, times the viewer in B, then closes the viewer's subscription, stops
the replication and waits until B's STAGE_STATE no longer lists the replica. Times are
milliseconds from the moment StartParticipantReplication returned (the call's own
duration is reported separately). --cpu-seconds needs a server this script started
(it reads the server process's CPU time from /proc).
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
sys.path.insert(0, str(HERE.parent / "media"))
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


async def call(fn, **kw):
    return await asyncio.to_thread(fn, **kw)


async def one_run(i: int, ivs, a: dict, b: dict, pid: str, viewer: dict, ev: EventsClient) -> dict:
    sub: Subscriber | None = None
    mark = len(ev.messages)

    async def viewer_side():
        nonlocal sub
        await ev.wait_state(lambda s: participants_by_id(s).get(pid, {}).get("isPublishing") is True,
                            15, start=mark, what=f"the replica {pid} publishing in B")
        t_event = time.monotonic()
        sub = Subscriber(f"viewer {i}")
        resp = await sub.subscribe(b["endpoints"]["whip"], pid, viewer["token"])
        if resp.status_code != 201:
            raise RuntimeError(f"subscribe: {describe(resp)}")
        t_sub = sub.post_done
        await sub.wait_connected(15)
        t_conn = time.monotonic()
        await sub.wait_video(1, timeout=15)
        return t_event, t_sub, t_conn, sub.video.arrivals[0]

    viewer_task = asyncio.ensure_future(viewer_side())
    try:
        t_call = time.monotonic()
        await call(ivs.start_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
                   participantId=pid)
        t0 = time.monotonic()
        t_event, t_sub, t_conn, t_frame = await viewer_task
        ms = lambda t: round((t - t0) * 1000, 1)
        return {"start_call_ms": round((t0 - t_call) * 1000, 1), "stage_state_ms": ms(t_event),
                "subscribe_answered_ms": ms(t_sub), "subscriber_connected_ms": ms(t_conn),
                "first_frame_ms": ms(t_frame)}
    finally:
        if not viewer_task.done():
            viewer_task.cancel()
        if sub is not None:
            await sub.close()
        mark = len(ev.messages)
        try:
            await call(ivs.stop_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
                       participantId=pid)
        except Exception as e:  # noqa: BLE001 - report and carry on to the next run
            print(f"run {i}: StopParticipantReplication: {e}", file=sys.stderr)
        await ev.wait_state(lambda s: pid not in participants_by_id(s), 15, start=mark, what=f"{pid} gone from B")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def cpu_phase(server_pid: int, seconds: float) -> float:
    """The server's CPU use over `seconds`, in percent of one core."""
    c0, t0 = cpu_seconds(server_pid), time.monotonic()
    await asyncio.sleep(seconds)
    return round(100 * (cpu_seconds(server_pid) - c0) / (time.monotonic() - t0), 1)


async def measure_cpu(ivs, server_pid: int, a: dict, b: dict, pid: str, seconds: float) -> dict:
    """Server CPU with the publisher alone; + one local subscriber in A; the subscriber
    gone and one replication A→B without a viewer; + one viewer of the replica in B."""
    local = ivs.create_participant_token(stageArn=a["arn"], userId="cpu-local", capabilities=["SUBSCRIBE"])
    remote = ivs.create_participant_token(stageArn=b["arn"], userId="cpu-remote", capabilities=["SUBSCRIBE"])
    out = {"seconds_per_phase": seconds}
    await asyncio.sleep(1.0)
    out["publisher_only_pct"] = await cpu_phase(server_pid, seconds)
    s = Subscriber("local subscriber")
    assert (await s.subscribe(a["endpoints"]["whip"], pid, local["participantToken"]["token"])).status_code == 201
    await s.wait_video(10, timeout=15)
    out["plus_local_subscriber_pct"] = await cpu_phase(server_pid, seconds)
    await s.close()
    await asyncio.sleep(1.0)
    await call(ivs.start_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
               participantId=pid)
    await asyncio.sleep(1.0)
    out["plus_replication_no_viewer_pct"] = await cpu_phase(server_pid, seconds)
    s = Subscriber("replica subscriber")
    assert (await s.subscribe(b["endpoints"]["whip"], pid, remote["participantToken"]["token"])).status_code == 201
    await s.wait_video(10, timeout=15)
    out["plus_replication_and_its_viewer_pct"] = await cpu_phase(server_pid, seconds)
    await s.close()
    await call(ivs.stop_participant_replication, sourceStageArn=a["arn"], destinationStageArn=b["arn"],
               participantId=pid)
    base = out["publisher_only_pct"]
    out["cost_of_one_local_subscriber_pct"] = round(out["plus_local_subscriber_pct"] - base, 1)
    out["cost_of_one_replication_pct"] = round(out["plus_replication_no_viewer_pct"] - base, 1)
    out["cost_of_one_replication_with_one_viewer_pct"] = round(out["plus_replication_and_its_viewer_pct"] - base, 1)
    return out


async def measure(ivs, runs: int, warmup: int, codec: str, cpu: float, server_pid: int | None) -> dict:
    a = ivs.create_stage(name="measure-replication-source")["stage"]
    b = ivs.create_stage(name="measure-replication-destination")["stage"]
    try:
        tp = ivs.create_participant_token(stageArn=a["arn"], userId="host", capabilities=["PUBLISH"])["participantToken"]
        viewer = ivs.create_participant_token(stageArn=b["arn"], userId="viewer",
                                              capabilities=["SUBSCRIBE"])["participantToken"]
        pid = tp["participantId"]
        pub = Publisher("publisher", colour=(210, 40, 40), tone=440.0, video_codec=f"video/{codec}")
        resp = await pub.publish(a["endpoints"]["whip"], tp["token"])
        if resp.status_code != 201:
            raise RuntimeError(f"publish: {describe(resp)}")
        await pub.wait_connected(15)
        result: dict = {}
        try:
            if cpu:
                if server_pid is None:
                    raise SystemExit("--cpu-seconds needs a server this script starts (no --endpoint)")
                result["cpu"] = await measure_cpu(ivs, server_pid, a, b, pid, cpu)
            ev = EventsClient("viewer in B")
            await ev.connect(b["endpoints"]["events"], b["arn"].rsplit("/", 1)[1], viewer["token"])
            samples = []
            try:
                for i in range(runs + warmup):
                    r = await asyncio.wait_for(one_run(i, ivs, a, b, pid, viewer, ev), 60)
                    if i >= warmup:
                        samples.append(r)
                    print(f"run {i + 1}/{runs + warmup}{' (warm-up)' if i < warmup else ''}: "
                          f"first frame {r['first_frame_ms']} ms after the response", file=sys.stderr)
                    await asyncio.sleep(0.2)
            finally:
                await ev.close()
        finally:
            await pub.close()
    finally:
        for s in (a, b):
            ivs.delete_stage(arn=s["arn"])
    keys = ["start_call_ms", "stage_state_ms", "subscribe_answered_ms", "subscriber_connected_ms", "first_frame_ms"]
    result.update({
        "measure": ("StartParticipantReplication response -> first decoded video frame at a destination client "
                    "already on the destination's events socket that subscribes when STAGE_STATE shows the replica"),
        "runs": len(samples), "warmup": warmup, "codec": codec, "resolution": "320x240@30",
        "first_frame_ms": summary([s["first_frame_ms"] for s in samples]),
        "start_call_ms": summary([s["start_call_ms"] for s in samples]),
        "breakdown_p50_ms": {k: round(percentile([s[k] for s in samples], 50), 1) for k in keys},
        "samples": samples,
    })
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=25, help="measured runs (≥ 20 for p95) [25]")
    ap.add_argument("--warmup", type=int, default=2, help="runs made first and not counted [2]")
    ap.add_argument("--codec", choices=["VP8", "H264"], default="VP8")
    ap.add_argument("--cpu-seconds", type=float, default=0.0,
                    help="also measure the server's CPU per phase for this many seconds [off]")
    ap.add_argument("--endpoint", help="a running onstage (API base URL); default: start one")
    ap.add_argument("--access-key", default="onstage")
    ap.add_argument("--secret-key", default="onstage-secret")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")

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
        result = asyncio.run(measure(ivs, args.runs, args.warmup, args.codec, args.cpu_seconds,
                                     server.proc.pid if server is not None else None))
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
