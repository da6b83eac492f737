#!/usr/bin/env python3
"""Server CPU for the STAGE_STATE of one join and one leave, with N events sockets
open (issue 12, item 5). Not a test: run it by hand and record the JSON
(docs/PERFORMANCE.md, "STAGE_STATE cost per change").

    .venv/bin/python tests/python/perf/measure_stage_state.py --sockets 40 400 --rounds 20

For each N: starts a fresh `onstage serve` (ONSTAGE_BIN, default target/debug/onstage;
`--server-cpus 0` pins it; 40 and 400 run one after the other, so the machine's other
load is about the same for both), opens N events sockets on one stage (N participants,
each with its own token) and waits until every socket has seen all N. Then, per
round, one more participant opens its socket (a join) and closes it (a leave); the
round ends when every one of the N sockets has received both STAGE_STATEs (the client
only counts `"isPublishing"` in each message, so it keeps up). The
server's CPU (utime+stime from /proc/<pid>/stat) is read before and after all rounds
and divided by the rounds. """

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import Server  # noqa: E402
from helpers import DEV  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402
from websockets.typing import Subprotocol  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Counter:
    def __init__(self):
        self.count = 0
        self.bytes = 0
        self.size = 0  # participants in the last STAGE_STATE
        self.changed = asyncio.Event()


async def read(ws, counter: Counter):
    try:
        async for raw in ws:
            counter.count += 1
            counter.bytes += len(raw)
            counter.size = raw.count('"isPublishing"')
            counter.changed.set()
    except Exception:
        pass


async def wait_all(counters: list[Counter], size: int, timeout: float = 120.0):
    """Until every socket's last STAGE_STATE lists `size` participants."""
    deadline = time.monotonic() + timeout
    for c in counters:
        while c.size != size:
            c.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"a socket's last state has {c.size} participants, wanted {size}")
            try:
                await asyncio.wait_for(c.changed.wait(), left)
            except asyncio.TimeoutError:
                pass


async def measure(n: int, rounds: int, server_cpus: str | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix="stage-state-"))
    srv = Server(root / "data", extra_args=["--log-format", "json"],
                 env={"RUST_LOG": "warn"})
    srv.start()
    if server_cpus:
        subprocess.run(["taskset", "-pc", server_cpus, str(srv.proc.pid)], check=True, capture_output=True)
    try:
        ivs = srv.client(DEV)
        stage = ivs.create_stage(name=f"state-{n}")["stage"]
        events = stage["endpoints"]["events"]
        stage_id = stage["arn"].rsplit("/", 1)[1]

        def token(user: str) -> str:
            return ivs.create_participant_token(stageArn=stage["arn"], userId=user,
                                                capabilities=["SUBSCRIBE"])["participantToken"]["token"]

        tokens = await asyncio.to_thread(lambda: [token(f"u{i}") for i in range(n)])
        extra = await asyncio.to_thread(token, "joiner")
        # The path form, which every version serves, so that builds before and after
        # a change can be compared.
        url = f"{events}/{stage_id}"
        sockets, counters, readers = [], [], []
        for i, t in enumerate(tokens):
            ws = await ws_connect(url, subprotocols=[Subprotocol(t)], ping_interval=None, max_size=None,
                                  open_timeout=30)
            c = Counter()
            sockets.append(ws)
            counters.append(c)
            readers.append(asyncio.ensure_future(read(ws, c)))
        await wait_all(counters, n)
        await asyncio.sleep(1.0)
        bytes0 = sum(c.bytes for c in counters)
        cpu0 = cpu_seconds(srv.proc.pid)
        t0 = time.monotonic()
        for r in range(rounds):
            ws = await ws_connect(url, subprotocols=[Subprotocol(extra)], ping_interval=None, max_size=None)
            await wait_all(counters, n + 1)
            await ws.close()
            await wait_all(counters, n)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(srv.proc.pid) - cpu0
        pushed = sum(c.bytes for c in counters) - bytes0
        for ws in sockets:
            await ws.close()
        for task in readers:
            task.cancel()
        return {
            "sockets": n,
            "rounds": rounds,
            "server_cpu_ms_per_join_and_leave": round(cpu * 1000 / rounds, 2),
            "wall_ms_per_join_and_leave": round(wall * 1000 / rounds, 1),
            "bytes_pushed_per_join_and_leave": pushed // rounds,
        }
    finally:
        srv.stop()


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, nargs="+", default=[40, 400])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--server-cpus", default=None)
    a = ap.parse_args()
    results = [await measure(n, a.rounds, a.server_cpus) for n in a.sockets]
    print(json.dumps({"binary": os.environ.get("ONSTAGE_BIN", "target/debug/onstage"), "results": results},
                     indent=2))


if __name__ == "__main__":
    asyncio.run(main())
