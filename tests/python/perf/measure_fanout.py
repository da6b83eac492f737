#!/usr/bin/env python3
"""Server CPU and RSS with 1 publisher and N real subscribers (issue 3, Acceptance).

Starts a release onstage pinned to one core (`taskset -c 0` by default), pins itself
(the peers) to another (`--client-cpus 1`), publishes one aiortc VP8 test pattern
(moving colour bars) plus an Opus tone, subscribes N aiortc subscribers that decode
everything, and once every subscriber has decoded video samples the server's CPU%
(/proc/<pid>/stat utime+stime deltas; 100% = one core) and RSS every second for
--seconds. Prints a JSON summary. Not a test: run it by hand and record the JSON
(docs/PERFORMANCE.md).

    .venv/bin/python tests/python/perf/measure_fanout.py
    .venv/bin/python tests/python/perf/measure_fanout.py --subscribers 10 --size 640x360 --seconds 20
    ONSTAGE_BIN=target/debug/onstage .venv/bin/python tests/python/perf/measure_fanout.py --server-cpus 0

The peers are aiortc (pure Python RTP/SRTP, FFmpeg decoding) sharing one core: with
10 subscribers they may not keep up. The received frames/s of every subscriber and
the peers' own CPU use are reported, so a shortfall on the client side is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = HERE.parent
REPO = PY.parents[1]
sys.path.insert(0, str(PY / "media"))

import av  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
from aiortc import VideoStreamTrack  # noqa: E402

import media_peers  # noqa: E402
from media_peers import Publisher, Subscriber, ToneTrack, codecs_of, describe  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the publisher's picture ------------------------------------------------------------------------
class PatternTrack(VideoStreamTrack):
    """Colour bars with a white square moving across them: every frame differs, as a
    camera's would, so the encoder produces a realistic stream."""

    BARS = [(235, 235, 235), (235, 235, 16), (16, 235, 235), (16, 235, 16),
            (235, 16, 235), (235, 16, 16), (16, 16, 235), (16, 16, 16)]

    def __init__(self, width: int, height: int):
        super().__init__()
        rgb = np.zeros((height, width, 3), np.uint8)
        bar = width // len(self.BARS) + 1
        for k, c in enumerate(self.BARS):
            rgb[:, k * bar:(k + 1) * bar] = c
        # gradient band at the bottom
        band = height // 5
        rgb[height - band:, :, :] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
        self._base = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
        self.width, self.height = width, height
        self.box = max(16, height // 6) & ~1
        self.frames_sent = 0
        self.sent_at: list[float] = []

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        yuv = self._base.copy()
        n = self.frames_sent
        x = (n * 4) % (self.width - self.box)
        y = (n * 2) % (self.height - self.box - self.height // 5)
        yuv[y:y + self.box, x:x + self.box] = 235  # luma plane is the first `height` rows
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = time_base
        self.frames_sent += 1
        self.sent_at.append(time.monotonic())
        return frame


class PatternPublisher(Publisher):
    def __init__(self, label: str, width: int, height: int, audio: bool):
        super().__init__(label)  # no tracks yet
        self.video = PatternTrack(width, height)
        t = self.pc.addTransceiver(self.video, direction="sendonly")
        t.setCodecPreferences(codecs_of("video", "video/VP8"))
        if audio:
            self.audio = ToneTrack(440.0)
            t = self.pc.addTransceiver(self.audio, direction="sendonly")
            t.setCodecPreferences(codecs_of("audio", "audio/opus"))


# --- the server ------------------------------------------------------------------------------------------
def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PinnedServer:
    def __init__(self, binary: Path, cpus: str | None, data_dir: Path):
        self.binary = binary
        self.cpus = cpus
        self.data_dir = data_dir
        self.port = free_port(socket.SOCK_STREAM)
        self.media_port = free_port(socket.SOCK_DGRAM)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / "onstage.log"
        self.args: list[str] = []

    def start(self) -> "PinnedServer":
        if not self.binary.exists():
            sys.exit(f"no onstage binary at {self.binary}: `cargo build --release -p onstage` or set ONSTAGE_BIN")
        self.args = ([] if self.cpus is None else ["taskset", "-c", self.cpus]) + [
            str(self.binary), "serve", "--listen", f"127.0.0.1:{self.port}",
            "--media-port", str(self.media_port), "--data-dir", str(self.data_dir), "--rtmp-port", "0"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONSTAGE_")}
        # `taskset -c` execs the server, so the pid we get is the server's.
        self.proc = subprocess.Popen(self.args, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"onstage exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        sys.exit("onstage did not become healthy in 30 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- /proc --------------------------------------------------------------------------------------------------
def cpu_ticks(stat_path: str) -> int:
    with open(stat_path) as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def media_thread_stat(pid: int) -> str | None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() == "onstage-media":
                    return f"/proc/{pid}/task/{tid}/stat"
        except OSError:
            pass
    return None


def metrics(url: str) -> dict[str, float]:
    out = {}
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def stats(xs: list[float]) -> dict:
    return {"avg": round(statistics.fmean(xs), 1), "max": round(max(xs), 1), "min": round(min(xs), 1)}


# --- the measurement -----------------------------------------------------------------------------------------
async def measure(args, server: PinnedServer, ivs) -> dict:
    width, height = (int(v) for v in args.size.split("x"))
    stage = ivs.create_stage(name="measure-fanout")["stage"]
    whip = stage["endpoints"]["whip"]
    tp = ivs.create_participant_token(stageArn=stage["arn"], userId="publisher",
                                      capabilities=["PUBLISH"])["participantToken"]
    ts = [ivs.create_participant_token(stageArn=stage["arn"], userId=f"viewer-{k}",
                                       capabilities=["SUBSCRIBE"])["participantToken"]
          for k in range(args.subscribers)]
    pub = PatternPublisher("publisher", width, height, audio=not args.no_audio)
    subs: list[Subscriber] = []
    try:
        r = await pub.publish(whip, tp["token"])
        if r.status_code != 201:
            raise RuntimeError(f"publish: {describe(r)}")
        await pub.wait_connected(15)
        for k, t in enumerate(ts):
            s = Subscriber(f"subscriber {k}", audio=not args.no_audio)
            subs.append(s)
            r = await s.subscribe(whip, tp["participantId"], t["token"])
            if r.status_code != 201:
                raise RuntimeError(f"subscribe {k}: {describe(r)}")
            await s.wait_connected(15)
        for s in subs:
            await s.wait_video(1, timeout=20)
        await asyncio.sleep(args.settle)

        # Sample.
        pid = server.pid
        stat = f"/proc/{pid}/stat"
        mstat = media_thread_stat(pid)
        me = f"/proc/{os.getpid()}/stat"
        m0 = metrics(server.url)
        t0 = time.monotonic()
        c0, mc0, me0 = cpu_ticks(stat), cpu_ticks(mstat) if mstat else 0, cpu_ticks(me)
        cpu, media_cpu, rss = [], [], []
        prev_t, prev_c, prev_m = t0, c0, mc0
        for _ in range(args.seconds):
            await asyncio.sleep(1.0)
            now = time.monotonic()
            c = cpu_ticks(stat)
            mc = cpu_ticks(mstat) if mstat else 0
            dt = now - prev_t
            cpu.append(100.0 * (c - prev_c) / CLK_TCK / dt)
            media_cpu.append(100.0 * (mc - prev_m) / CLK_TCK / dt)
            rss.append(rss_kb(pid) / 1024)
            prev_t, prev_c, prev_m = now, c, mc
        t1 = time.monotonic()
        m1 = metrics(server.url)
        span = t1 - t0
        client_cpu = 100.0 * (cpu_ticks(me) - me0) / CLK_TCK / span

        def rate(name: str) -> float:
            return (m1.get(name, 0) - m0.get(name, 0)) / span

        fps = [round(sum(1 for a in s.video.arrivals if t0 < a <= t1) / span, 1) for s in subs]
        audio_fps = [round(sum(1 for a in s.audio.arrivals if t0 < a <= t1) / span, 1)
                     for s in subs if s.audio is not None]
        sent_fps = sum(1 for a in pub.video.sent_at if t0 < a <= t1) / span
        return {
            "server_cpu_percent": stats(cpu),
            "server_media_thread_cpu_percent": stats(media_cpu) if mstat else None,
            "server_rss_mib": stats(rss),
            "publisher_sent_fps": round(sent_fps, 1),
            "subscriber_received_video_fps": fps,
            "subscriber_received_video_fps_avg": round(statistics.fmean(fps), 1),
            "subscriber_received_audio_frames_per_s": audio_fps,
            "server_forwarded": {
                "packets_per_s": round(rate("onstage_media_packets_forwarded_total"), 1),
                "mbit_per_s": round(rate("onstage_media_bytes_forwarded_total") * 8 / 1e6, 2),
                "packets_in_per_s": round(rate("onstage_media_packets_received_total"), 1),
                "mbit_in_per_s": round(rate("onstage_media_bytes_received_total") * 8 / 1e6, 2),
            },
            "media_gauges": {k: m1.get(k) for k in ("onstage_media_peers", "onstage_media_sources")},
            "client_cpu_percent": round(client_cpu, 1),
            "sampled_seconds": round(span, 1),
            "cpu_samples": [round(x, 1) for x in cpu],
        }
    finally:
        for s in subs:
            await s.close()
        await pub.close()
        ivs.delete_stage(arn=stage["arn"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=10)
    ap.add_argument("--size", default="640x360", help="publisher's video, WxH at 30 fps [640x360]")
    ap.add_argument("--seconds", type=int, default=20, help="samples, one a second [20]")
    ap.add_argument("--settle", type=float, default=3.0, help="wait after all decode, before sampling [3]")
    ap.add_argument("--no-audio", action="store_true", help="publish video only")
    ap.add_argument("--server-cpus", default="0", help="taskset -c list for the server; 'none' = unpinned [0]")
    ap.add_argument("--client-cpus", default="1", help="CPUs of this process (the peers); 'none' = unpinned [1]")
    ap.add_argument("--binary", default=os.environ.get("ONSTAGE_BIN", str(REPO / "target" / "release" / "onstage")))
    args = ap.parse_args()

    if args.client_cpus != "none":
        cpus = set()
        for part in args.client_cpus.split(","):
            a, _, b = part.partition("-")
            cpus.update(range(int(a), int(b or a) + 1))
        os.sched_setaffinity(0, cpus)
    media_peers.use_loopback_ice()

    import boto3
    from botocore.config import Config

    load_before = open("/proc/loadavg").read().split()[:3]
    tmp = Path(tempfile.mkdtemp(prefix="onstage-fanout-"))
    server = PinnedServer(Path(args.binary), None if args.server_cpus == "none" else args.server_cpus,
                          tmp / "data").start()
    try:
        ivs = boto3.client("ivs-realtime", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="onstage", aws_secret_access_key="onstage-secret",
                           config=Config(retries={"max_attempts": 1}))
        result = asyncio.run(asyncio.wait_for(measure(args, server, ivs), 300 + args.seconds))
        result = {
            "measure": f"1 publisher (VP8 {args.size}@30 test pattern"
                       f"{'' if args.no_audio else ' + Opus'}) -> {args.subscribers} decoding aiortc subscribers",
            **result,
            "server_command": " ".join(server.args),
            "command": " ".join([sys.executable.replace(str(REPO) + "/", ""),
                                 str(Path(sys.argv[0]).resolve()).replace(str(REPO) + "/", "")] + sys.argv[1:]),
            "client_affinity": sorted(os.sched_getaffinity(0)),
            "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release()},
            "loadavg_before": load_before,
            "loadavg_after": open("/proc/loadavg").read().split()[:3],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        print(json.dumps(result, indent=2))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
