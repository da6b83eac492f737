"""1,000 join/leave cycles against one onstage leave nothing behind (issue 3, Deliver 7).

One dedicated server (its own process, so its /proc figures are ours alone). Every
cycle is a real participant with a fresh server-issued token:

- cheap cycle (most of them): the events WebSocket joins (STAGE_STATE naming the
  participant), a WHIP publish of a real aiortc offer is answered 201, DELETE of its
  Location, then the socket closes — gracefully, or (every 7th) by dropping TCP;
- connected cycle (every 50th): a publisher and a second participant subscribing to
  it connect for real (ICE, DTLS-SRTP), the subscriber decodes the publisher's video,
  then both leave — by DELETE, or (every other time) by closing the peer connection
  without DELETE (the server learns it from DTLS close_notify);
- abandoned cycle (every 100th, in the first part of the run): a publish answered
  201 that never connects and is never deleted; the server must give it up on its
  own (connect timeout).

Cycles run WORKERS at a time over STAGES stages, so participants join stages that are
empty (a session starts and ends) and stages that are busy.

Measured after a warm-up of WARMUP cycles (the same mix), when the server is idle,
and again after the run once it is idle: RSS (/proc/<pid>/status VmRSS), open file
descriptors (/proc/<pid>/fd, sockets counted apart), threads (/proc/<pid>/status
Threads), the media gauges of /metrics (`onstage_media_peers`,
`onstage_media_sources`), every session of the run ended with no participant left
CONNECTED, no `activeSessionId`. If the server exposes a tokio alive-tasks gauge
(any metric whose name ends in `alive_tasks`), it must return to its baseline too.

ONSTAGE_SOAK_CYCLES overrides the number of measured cycles (default 1000).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urljoin

import pytest
import requests

from media_peers import EventsClient, Publisher, Subscriber, describe, http, participants_by_id

CYCLES = int(os.environ.get("ONSTAGE_SOAK_CYCLES", "1000"))
WARMUP = 50
WORKERS = 4
STAGES = 2
CONNECTED_EVERY = 50  # cycle i with i % 50 == 25 connects for real
ABANDON_EVERY = 100  # cycle i with i % 100 == 60 publishes and vanishes (first part of the run)
ABRUPT_EVERY = 7  # cycle i with i % 7 == 3 drops the events socket's TCP connection

# Margins: what "back to baseline" allows.
FD_MARGIN = 4  # open file descriptors
THREAD_MARGIN = 2  # OS threads (tokio's blocking pool grows and shrinks on its own)
RSS_MARGIN_KB = 20 * 1024  # RSS growth over the whole run, after warm-up
RSS_SECOND_HALF_MARGIN_KB = 10 * 1024  # RSS growth over the second half of the run

# How long the server may take to become idle after the run: the abandoned publishes
# are given up by the server's connect timeout (20 s in onstage-media's driver).
IDLE_TIMEOUT = 45.0
SETTLE_TIMEOUT = 20.0

MEDIA_GAUGES = ("onstage_media_peers", "onstage_media_sources")
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")

pytestmark = pytest.mark.soak


# --- what the server holds ------------------------------------------------------------
def proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def fd_counts(pid: int) -> tuple[int, int]:
    """(all open fds, of which sockets)."""
    total = sockets = 0
    d = f"/proc/{pid}/fd"
    for name in os.listdir(d):
        try:
            target = os.readlink(f"{d}/{name}")
        except OSError:
            continue  # closed meanwhile
        total += 1
        if target.startswith("socket:"):
            sockets += 1
    return total, sockets


def disk_kb(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) // 1024


def metrics(server) -> dict[str, float]:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        if m and not m.group(2):
            try:
                out[m.group(1)] = float(m.group(3))
            except ValueError:
                pass
    return out


def alive_tasks(m: dict[str, float]) -> float | None:
    names = sorted(k for k in m if k.endswith("alive_tasks"))
    return m[names[0]] if names else None


@dataclass
class Snapshot:
    rss_kb: int
    anon_kb: int  # RssAnon: the heap and stacks; RssFile/RssShmem are mapped files (SQLite's WAL index)
    fds: int
    sockets: int
    threads: int
    tasks: float | None

    @classmethod
    def take(cls, server) -> "Snapshot":
        pid = server.proc.pid
        st = proc_status(pid)
        fds, socks = fd_counts(pid)
        kb = lambda k: int(st.get(k, "0 kB").split()[0])
        return cls(kb("VmRSS"), kb("RssAnon"), fds, socks, int(st["Threads"]), alive_tasks(metrics(server)))

    def brief(self) -> str:
        t = "" if self.tasks is None else f" tasks={self.tasks:g}"
        return f"rss={self.rss_kb / 1024:.1f}MiB (anon {self.anon_kb / 1024:.1f}MiB) fds={self.fds} (sockets {self.sockets}) threads={self.threads}{t}"


# --- the cycles ------------------------------------------------------------------------------
@dataclass
class Run:
    server: object
    ivs: object
    stages: list[dict]
    executor: ThreadPoolExecutor
    participants: dict[str, int] = field(default_factory=lambda: {"cheap": 0, "connected": 0, "abandoned": 0})
    expected_records: int = 0  # participant records the run creates
    cycle_ms: list[float] = field(default_factory=list)
    connected_ms: list[float] = field(default_factory=list)

    async def token(self, stage: dict, user: str, caps=("PUBLISH", "SUBSCRIBE")) -> dict:
        loop = asyncio.get_running_loop()
        resp = await loop.run_in_executor(self.executor, lambda: self.ivs.create_participant_token(
            stageArn=stage["arn"], userId=user, capabilities=list(caps)))
        self.expected_records += 1
        return resp["participantToken"]


def kind_of(i: int, total: int) -> str:
    if i % CONNECTED_EVERY == 25:
        return "connected"
    if i % ABANDON_EVERY == 60 and WARMUP <= i < total - 300:
        return "abandoned"
    return "cheap"


async def post_offer(whip: str, sdp: str, token: str) -> requests.Response:
    return await http("POST", whip, data=sdp.encode(),
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})


async def cheap_cycle(run: Run, i: int, stage: dict, abandon: bool) -> None:
    whip, events = stage["endpoints"]["whip"], stage["endpoints"]["events"]
    stage_id = stage["arn"].rsplit("/", 1)[1]
    tok = await run.token(stage, f"soak-{i}")
    pid = tok["participantId"]
    ev = EventsClient(f"events {i}")
    pub = Publisher(f"publisher {i}", colour=(i % 256, 80, 160), tone=440.0)
    try:
        await ev.connect(events, stage_id, tok["token"])
        await ev.wait_state(lambda s: pid in participants_by_id(s), 10, what=f"{pid} in STAGE_STATE")
        sdp = await pub.make_offer()
        r = await post_offer(whip, sdp, tok["token"])
        assert r.status_code == 201, describe(r)
        loc = r.headers.get("Location")
        assert loc, describe(r)
        if not abandon:
            d = await http("DELETE", urljoin(whip, loc))
            assert 200 <= d.status_code < 300, describe(d)
    finally:
        # The answer is never applied, so aiortc starts no ICE: an abandoned publish
        # is, for the server, a client that vanished right after the POST.
        await pub.pc.close()
        for t in (pub.video, pub.audio):
            t.stop()
        if ev.ws is not None and i % ABRUPT_EVERY == 3:
            ev.ws.transport.abort()
        await ev.close()


async def connected_cycle(run: Run, i: int, stage: dict) -> None:
    whip = stage["endpoints"]["whip"]
    tp = await run.token(stage, f"soak-pub-{i}", ("PUBLISH",))
    ts = await run.token(stage, f"soak-sub-{i}", ("SUBSCRIBE",))
    by_delete = (i // CONNECTED_EVERY) % 2 == 0
    pub = Publisher(f"publisher {i}", colour=(200, 40, 40), tone=440.0, video_codec="video/VP8")
    sub = Subscriber(f"subscriber {i}")
    t0 = time.monotonic()
    try:
        r = await pub.publish(whip, tp["token"])
        assert r.status_code == 201, describe(r)
        await pub.wait_connected(15)
        r = await sub.subscribe(whip, tp["participantId"], ts["token"])
        assert r.status_code == 201, describe(r)
        await sub.wait_connected(15)
        video = await sub.wait_video(3, timeout=15)
        colour = video.mean_colour()
        assert colour is not None and abs(colour[0] - 200) < 40 and colour[1] < 100, (
            f"cycle {i}: the subscriber decoded {colour}, not the publisher's red")
        run.connected_ms.append((time.monotonic() - t0) * 1000)
    finally:
        if by_delete:
            await sub.close()  # DELETE, then close
            await pub.close()
        else:
            # No DELETE: the peer connections close (DTLS close_notify) and the
            # server has to notice by itself.
            sub.location = pub.location = None
            await sub.close()
            await pub.close()


async def run_cycles(run: Run, first: int, count: int, total: int, progress=None) -> None:
    indices = iter(range(first, first + count))
    errors: list[BaseException] = []

    async def worker(w: int) -> None:
        for i in indices:
            if errors:
                return
            stage = run.stages[i % len(run.stages)]
            kind = kind_of(i, total)
            t0 = time.monotonic()
            try:
                if kind == "connected":
                    await asyncio.wait_for(connected_cycle(run, i, stage), 60)
                else:
                    await asyncio.wait_for(cheap_cycle(run, i, stage, abandon=kind == "abandoned"), 30)
            except BaseException as e:
                errors.append(e)
                raise AssertionError(f"cycle {i} ({kind}) failed: {e!r}") from e
            run.participants[kind] += 1
            if kind == "cheap":
                run.cycle_ms.append((time.monotonic() - t0) * 1000)
            if progress is not None:
                progress(i)

    await asyncio.gather(*(worker(w) for w in range(WORKERS)))


# --- idle --------------------------------------------------------------------------------------
def wait_idle(server, ivs, stages: list[dict], timeout: float) -> dict:
    """Waits until the media gauges are 0 and no stage has an active session.
    Returns what it saw last (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(server)
        gauges = {g: m.get(g) for g in MEDIA_GAUGES}
        active = {s["arn"]: ivs.get_stage(arn=s["arn"])["stage"].get("activeSessionId") for s in stages}
        idle = all(v == 0 for v in gauges.values()) and not any(active.values())
        if idle or time.monotonic() > deadline:
            return {"idle": idle, "gauges": gauges, "active_sessions": {k: v for k, v in active.items() if v}}
        time.sleep(0.5)


def wait_settled(server, base: Snapshot, timeout: float) -> Snapshot:
    """Polls until fds and threads are back within their margins (tokio's idle
    blocking threads and closed sockets take a moment to go)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = Snapshot.take(server)
        if (snap.fds <= base.fds + FD_MARGIN and snap.threads <= base.threads + THREAD_MARGIN) \
                or time.monotonic() > deadline:
            return snap
        time.sleep(0.5)


def sessions_of(ivs, stage_arn: str) -> list[dict]:
    out, token = [], None
    while True:
        kw = dict(stageArn=stage_arn, maxResults=100)
        if token:
            kw["nextToken"] = token
        page = ivs.list_stage_sessions(**kw)
        out += page.get("stageSessions", [])
        token = page.get("nextToken")
        if not token:
            return out


def participants_of(ivs, stage_arn: str, session_id: str, **filters) -> list[dict]:
    out, token = [], None
    while True:
        kw = dict(stageArn=stage_arn, sessionId=session_id, maxResults=100, **filters)
        if token:
            kw["nextToken"] = token
        page = ivs.list_participants(**kw)
        out += page.get("participants", [])
        token = page.get("nextToken")
        if not token:
            return out


# --- the test ----------------------------------------------------------------------------------
def test_join_leave_cycles_leak_nothing(server_factory):
    server = server_factory()
    ivs = server.client()
    stages = [ivs.create_stage(name=f"soak-{k}")["stage"] for k in range(STAGES)]
    total = WARMUP + CYCLES
    executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="soak-api")
    run = Run(server, ivs, stages, executor)
    samples: list[tuple[int, int]] = []  # (cycles done, RSS kB)
    report: list[str] = []

    def say(msg: str) -> None:
        report.append(msg)
        print(msg, flush=True)

    try:
        started = time.monotonic()
        asyncio.run(asyncio.wait_for(run_cycles(run, 0, WARMUP, total), 300))
        idle = wait_idle(server, ivs, stages, IDLE_TIMEOUT)
        assert idle["idle"], f"not idle after the warm-up: {idle}"
        time.sleep(1.5)
        base = Snapshot.take(server)
        say(f"baseline after {WARMUP} warm-up cycles: {base.brief()}")

        disk = [disk_kb(server.data_dir)]
        done = itertools.count(1)
        checkpoint = max(1, CYCLES // 10)

        def progress(_i: int) -> None:
            n = next(done)
            if n % checkpoint == 0:
                rss = int(proc_status(server.proc.pid)["VmRSS"].split()[0])
                samples.append((n, rss))
                disk.append(disk_kb(server.data_dir))

        t_run = time.monotonic()
        records_before = run.expected_records
        kinds_before = dict(run.participants)
        asyncio.run(asyncio.wait_for(run_cycles(run, WARMUP, CYCLES, total, progress), 900))
        run_s = time.monotonic() - t_run
        assert server.proc.poll() is None, f"onstage exited ({server.proc.returncode}) during the run:\n{server.log()}"
        kinds = {k: v - kinds_before[k] for k, v in run.participants.items()}
        say(f"{CYCLES} cycles in {run_s:.1f}s ({kinds}); cheap cycle p50 "
            f"{sorted(run.cycle_ms)[len(run.cycle_ms) // 2]:.0f} ms, connected cycle p50 "
            f"{sorted(run.connected_ms)[len(run.connected_ms) // 2]:.0f} ms")
        say("RSS during the run (cycles done: MiB): "
            + ", ".join(f"{n}: {kb / 1024:.1f}" for n, kb in samples)
            + f"; the data directory grew from {disk[0] / 1024:.1f} to {disk[-1] / 1024:.1f} MiB")

        t_idle = time.monotonic()
        idle = wait_idle(server, ivs, stages, IDLE_TIMEOUT)
        say(f"idle after {time.monotonic() - t_idle:.1f}s: {idle}")
        after = wait_settled(server, base, SETTLE_TIMEOUT)
        say(f"after the run: {after.brief()}")
        growth = after.rss_kb - base.rss_kb
        mid = next((kb for n, kb in samples if n >= CYCLES // 2), None)
        second_half = after.rss_kb - mid if mid is not None else 0
        say(f"deltas: rss {growth / 1024:+.1f} MiB (anon {(after.anon_kb - base.anon_kb) / 1024:+.1f} MiB, second half {second_half / 1024:+.1f} MiB, "
            f"{growth / CYCLES:+.2f} kB/cycle), fds {after.fds - base.fds:+d} "
            f"(sockets {after.sockets - base.sockets:+d}), threads {after.threads - base.threads:+d}")

        # Sessions and participants of the run, through the API.
        sessions = [(s["arn"], x) for s in stages for x in sessions_of(ivs, s["arn"])]
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            connected = list(pool.map(lambda sx: (sx[1]["sessionId"], participants_of(
                ivs, sx[0], sx[1]["sessionId"], filterByState="CONNECTED")), sessions))
            every = list(pool.map(lambda sx: participants_of(ivs, sx[0], sx[1]["sessionId"]), sessions))
        records = [p for ps in every for p in ps]
        still = {sid: [p["participantId"] for p in ps] for sid, ps in connected if ps}
        not_ended = [x["sessionId"] for _, x in sessions if not x.get("endTime")]
        say(f"{len(sessions)} sessions, {len(records)} participant records "
            f"(expected {run.expected_records}), CONNECTED: {sum(map(len, still.values()))}")

        # --- the assertions ---
        assert idle["idle"], (f"the server is not idle {IDLE_TIMEOUT}s after the run: media gauges "
                              f"{idle['gauges']}, active sessions {idle['active_sessions']}")
        assert not still, f"participants still CONNECTED after everyone left: {still}"
        assert not not_ended, f"sessions without endTime after everyone left: {not_ended}"
        states = {p["state"] for p in records}
        assert states <= {"DISCONNECTED"}, f"participant states after the run: {states}"
        assert len(records) == run.expected_records, (
            f"{len(records)} participant records for {run.expected_records} participants that joined "
            f"({records_before} before the measured run)")
        assert after.fds <= base.fds + FD_MARGIN, (
            f"open fds grew from {base.fds} to {after.fds} (sockets {base.sockets} -> {after.sockets}): "
            f"leaked sockets or files")
        assert after.threads <= base.threads + THREAD_MARGIN, (
            f"threads grew from {base.threads} to {after.threads}")
        if base.tasks is not None and after.tasks is not None:
            assert after.tasks <= base.tasks + 2, f"alive tasks grew from {base.tasks} to {after.tasks}"
        assert growth < RSS_MARGIN_KB, (
            f"RSS grew by {growth / 1024:.1f} MiB over {CYCLES} cycles "
            f"({base.rss_kb / 1024:.1f} -> {after.rss_kb / 1024:.1f} MiB; margin {RSS_MARGIN_KB / 1024:.0f} MiB)")
        assert second_half < RSS_SECOND_HALF_MARGIN_KB, (
            f"RSS grew by {second_half / 1024:.1f} MiB over the second half of the run (still growing; "
            f"margin {RSS_SECOND_HALF_MARGIN_KB / 1024:.0f} MiB): {samples}")
        say(f"total {time.monotonic() - started:.1f}s")
    finally:
        executor.shutdown(wait=False)
        for s in stages:
            try:
                ivs.delete_stage(arn=s["arn"])
            except Exception:
                pass
