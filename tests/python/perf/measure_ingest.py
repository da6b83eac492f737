#!/usr/bin/env python3
"""RTMP ingest figures (issue 15, Acceptance): A/V offset, added latency, CPU.

Starts onstage (ONSTAGE_BIN, default target/debug/onstage) with RTMP on a free port,
makes a stage and an ingest configuration with boto3, and runs three phases with
Debian's ffmpeg as the encoder and an aiortc subscriber (decoding everything):

  offset   ffmpeg pushes black video that turns white for 100 ms at every whole
           second and a 1 kHz beep over the same 100 ms (both from ffmpeg's own lavfi
           clock, H.264 + AAC); the subscriber times when each flash is decoded and
           when each beep's first loud Opus frame is decoded; offset = beep − flash.
  latency  Python writes raw frames into ffmpeg's stdin at 30 fps (black; white for
           100 ms once a second), ffmpeg encodes (libx264 ultrafast zerolatency, no audio) and
           pushes over RTMP; latency = when the subscriber decoded a white frame −
           when Python wrote the first of its three white frames. This includes ffmpeg's own encoding and its RTMP
           write, aiortc's jitter buffer and decoding: an upper bound of what onstage
           adds between the encoder and a WebRTC viewer on loopback.
  cpu      onstage's utime+stime (/proc/<pid>/stat) over --seconds idle, then over
           --seconds with ffmpeg pushing 1280x720 at 30 fps + AAC (no subscriber): the
           difference is one ingested 720p30 stream (RTMP, repacketizing, AAC → Opus).

Prints a JSON summary with `uptime` beside each phase. Not a test: run it by hand.

    .venv/bin/python tests/python/perf/measure_ingest.py --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = HERE.parent
REPO = PY.parents[1]
sys.path.insert(0, str(PY / "media"))
sys.path.insert(0, str(PY))

import boto3  # noqa: E402
import numpy as np  # noqa: E402
from botocore.config import Config  # noqa: E402

import media_peers  # noqa: E402
from media_peers import Subscriber  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Server:
    def __init__(self, binary: Path, root: Path):
        self.port, self.media_port, self.rtmp_port = free_port(), free_port(socket.SOCK_DGRAM), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONSTAGE_")}
        self.log = open(root / "onstage.log", "wb")
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--listen", f"127.0.0.1:{self.port}", "--media-port", str(self.media_port),
             "--rtmp-port", str(self.rtmp_port), "--data-dir", str(root / "data")],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.ivs = boto3.client("ivs-realtime", endpoint_url=f"http://127.0.0.1:{self.port}",
                                region_name="us-east-1", aws_access_key_id="onstage",
                                aws_secret_access_key="onstage-secret",
                                config=Config(retries={"max_attempts": 1}))
        deadline = time.monotonic() + 30
        while True:
            try:
                self.ivs.list_stages()
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


def make_ingest(ivs):
    stage = ivs.create_stage(name="measure-ingest")["stage"]
    config = ivs.create_ingest_configuration(stageArn=stage["arn"], ingestProtocol="RTMP",
                                             insecureIngest=True)["ingestConfiguration"]
    return stage, config


async def wait_publishing(ivs, stage, pid, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = ivs.get_stage(arn=stage["arn"])["stage"].get("activeSessionId")
        if session:
            p = ivs.get_participant(stageArn=stage["arn"], sessionId=session, participantId=pid)["participant"]
            if p["published"] and p["state"] == "CONNECTED":
                return
        await asyncio.sleep(0.1)
    raise RuntimeError("the ingest participant never published")


class TimedSubscriber(Subscriber):
    """Records (arrival, mean luminance) of every decoded frame and (arrival, rms)
    of every decoded audio frame."""

    def __init__(self):
        super().__init__("measure")
        self.luma: list[tuple[float, float]] = []
        self.loud: list[tuple[float, float]] = []
        # Only this class reads the tracks (two readers would split the frames).
        self.pc.remove_all_listeners("track")

        @self.pc.on("track")
        def _track(track):
            asyncio.ensure_future(self._consume(track))

    async def _consume(self, track):
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "video":
                    y = frame.to_ndarray(format="gray")
                    self.luma.append((now, float(y.mean())))
                else:
                    pcm = frame.to_ndarray().astype(np.float64)
                    self.loud.append((now, float(np.sqrt(np.mean(pcm ** 2)))))
        except Exception:
            pass


def rate(series) -> float | None:
    if len(series) < 2:
        return None
    return round((len(series) - 1) / (series[-1][0] - series[0][0]), 1)


def onsets(series, threshold, min_gap=0.5):
    out, last = [], -1e9
    above = False
    for t, v in series:
        if v > threshold and not above and t - last > min_gap:
            out.append(t)
            last = t
        above = v > threshold
    return out


async def subscribe(ivs, stage, pid) -> TimedSubscriber:
    token = ivs.create_participant_token(stageArn=stage["arn"], capabilities=["SUBSCRIBE"])
    sub = TimedSubscriber()
    resp = await sub.subscribe(stage["endpoints"]["whip"], pid, token["participantToken"]["token"])
    assert resp.status_code == 201, resp.text
    await sub.wait_connected(10)
    return sub


async def phase_offset(server: Server, seconds: float) -> dict:
    stage, config = make_ingest(server.ivs)
    url = f"rtmp://127.0.0.1:{server.rtmp_port}/app/{config['streamKey']}"
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-v", "error", "-re",
         "-f", "lavfi", "-i", "color=c=black:s=640x360:r=30",
         "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
         "-vf", "drawbox=c=white:t=fill:enable='lt(mod(t,1),0.1)'",
         "-af", "volume=enable='gte(mod(t,1),0.1)':volume=0",
         "-t", str(seconds + 8), "-c:v", "libx264", "-profile:v", "baseline", "-bf", "0", "-g", "30",
         "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-ar", "48000", "-f", "flv", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_publishing(server.ivs, stage, config["participantId"])
        sub = await subscribe(server.ivs, stage, config["participantId"])
        await asyncio.sleep(seconds)
        flashes = onsets(sub.luma, 128)
        beeps = onsets(sub.loud, 0.02 * 32768)
        pairs = []
        for f in flashes:
            near = [b - f for b in beeps if abs(b - f) < 0.5]
            if near:
                pairs.append(min(near, key=abs) * 1000)
        await sub.close()
    finally:
        ffmpeg.kill()
        ffmpeg.wait()
    return {"video_fps_decoded": rate(sub.luma), "audio_frames_per_s": rate(sub.loud),
            "flashes": len(flashes), "beeps": len(beeps), "pairs": len(pairs),
            "offset_ms_median": round(statistics.median(pairs), 1) if pairs else None,
            "offset_ms_mean": round(statistics.mean(pairs), 1) if pairs else None,
            "offset_ms_min": round(min(pairs), 1) if pairs else None,
            "offset_ms_max": round(max(pairs), 1) if pairs else None,
            "uptime": uptime()}


async def phase_latency(server: Server, seconds: float) -> dict:
    stage, config = make_ingest(server.ivs)
    url = f"rtmp://127.0.0.1:{server.rtmp_port}/app/{config['streamKey']}"
    w, h = 640, 360
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{w}x{h}",
         "-r", "30", "-i", "-", "-c:v", "libx264", "-profile:v", "baseline", "-bf", "0", "-g", "30",
         "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-f", "flv", url],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    black, white = bytes(w * h), bytes([255]) * (w * h)
    written: list[float] = []
    stop = threading.Event()

    def feed():
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            t = start + n / 30
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # White for three frames (100 ms) once a second; the first one's
            # write is the instant measured.
            flash = n % 30 < 3 and n >= 30
            try:
                ffmpeg.stdin.write(white if flash else black)
                ffmpeg.stdin.flush()
            except (BrokenPipeError, ValueError):
                return
            if flash and n % 30 == 0:
                written.append(time.monotonic())
            n += 1

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        await wait_publishing(server.ivs, stage, config["participantId"])
        sub = await subscribe(server.ivs, stage, config["participantId"])
        await asyncio.sleep(seconds)
        seen = onsets(sub.luma, 128)
        await sub.close()
    finally:
        stop.set()
        feeder.join(timeout=5)
        try:
            ffmpeg.stdin.close()
        except Exception:
            pass
        ffmpeg.kill()
        ffmpeg.wait()
    lat = []
    for s in seen:
        before = [s - x for x in written if 0 < s - x < 2.0]
        if before:
            lat.append(min(before) * 1000)
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None
    return {"video_fps_decoded": rate(sub.luma), "frames_decoded": len(sub.luma), "max_luma": max((v for _, v in sub.luma), default=None),
            "flashes_written": len(written), "flashes_seen": len(lat), "latency_ms_p50": q(0.5), "latency_ms_p90": q(0.9),
            "latency_ms_min": round(lat[0], 1) if lat else None, "uptime": uptime()}


async def phase_cpu(server: Server, seconds: float) -> dict:
    pid = server.proc.pid
    before_idle = uptime()
    c0 = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    idle = cpu_seconds(pid) - c0
    stage, config = make_ingest(server.ivs)
    url = f"rtmp://127.0.0.1:{server.rtmp_port}/app/{config['streamKey']}"
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-v", "error", "-re",
         "-f", "lavfi", "-i", "testsrc=size=1280x720:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(seconds + 20), "-c:v", "libx264", "-profile:v", "baseline", "-bf", "0", "-g", "60",
         "-preset", "ultrafast", "-b:v", "3M", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
         "-ar", "48000", "-f", "flv", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_publishing(server.ivs, stage, config["participantId"])
        await asyncio.sleep(2)
        during = uptime()
        c1 = cpu_seconds(pid)
        await asyncio.sleep(seconds)
        busy = cpu_seconds(pid) - c1
    finally:
        ffmpeg.kill()
        ffmpeg.wait()
    return {"seconds": seconds, "idle_cpu_s": round(idle, 2), "ingest_cpu_s": round(busy, 2),
            "per_stream_cpu_s_per_s": round((busy - idle) / seconds, 4),
            "per_stream_core_pct": round((busy - idle) / seconds * 100, 1),
            "uptime_idle": before_idle, "uptime_ingest": during}


async def main(args) -> dict:
    media_peers.use_loopback_ice()
    binary = Path(os.environ.get("ONSTAGE_BIN", REPO / "target/debug/onstage"))
    out = {"binary": str(binary)}
    with tempfile.TemporaryDirectory() as root:
        server = Server(binary, Path(root))
        try:
            if "offset" in args.phases:
                out["offset"] = await phase_offset(server, args.seconds)
            if "latency" in args.phases:
                out["latency"] = await phase_latency(server, args.seconds)
            if "cpu" in args.phases:
                out["cpu"] = await phase_cpu(server, args.seconds)
        finally:
            server.stop()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--phases", default="offset,latency,cpu")
    print(json.dumps(asyncio.run(main(ap.parse_args())), indent=2))
