"""Start, list and stop a replication with the AWS CLI (`aws ivs-realtime ...`), with a
real aiortc publisher in the source stage."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

from helpers import DEV
from media_peers import Cleanup
from replication_peers import GREEN, HEADER_MEMBERS, Viewer, active_session, publish


@pytest.fixture
def cli(aws_cli, server, tmp_root):
    home = tmp_root / "replication-cli-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": DEV.access_key,
        "AWS_SECRET_ACCESS_KEY": DEV.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_PAGER": "",
        "HOME": str(home),
    })

    def run(*args):
        cmd = [str(aws_cli), "ivs-realtime", *args, "--endpoint-url", server.url, "--output", "json"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    async def ok(*args):
        p = await asyncio.to_thread(run, *args)
        assert p.returncode == 0, f"aws ivs-realtime {' '.join(args)} exited {p.returncode}:\n{p.stderr}"
        return json.loads(p.stdout) if p.stdout.strip() else {}

    async def fails(*args):
        p = await asyncio.to_thread(run, *args)
        assert p.returncode != 0, f"aws ivs-realtime {' '.join(args)} succeeded:\n{p.stdout}"
        return p

    return ok, fails


def test_start_list_stop_with_the_aws_cli(cli, ivs, make_stage, token_for, arun):
    ok, fails = cli
    a, b = make_stage("cli-source"), make_stage("cli-destination")
    tp = token_for(a, "cli-host", ("PUBLISH",), attributes={"role": "host"})
    tv = token_for(b, "cli-viewer", ("SUBSCRIBE",))
    pid = tp["participantId"]

    async def go():
        c = Cleanup()
        try:
            await publish(c, a, tp, "publisher in A", colour=GREEN, tone=440.0)
            src_session = await asyncio.to_thread(active_session, ivs, a["arn"])
            v = await Viewer.open(c, b, tv, "viewer in B")
            dst_session = await asyncio.to_thread(active_session, ivs, b["arn"])
            mark = len(v.events.messages)

            out = await ok("start-participant-replication", "--source-stage-arn", a["arn"],
                           "--destination-stage-arn", b["arn"], "--participant-id", pid,
                           "--reconnect-window-seconds", "0", "--attributes", "origin=cli")
            for k, val in HEADER_MEMBERS.items():
                assert out.get(k) == val, f"the CLI's output of start-participant-replication: {out}"
            await v.watch(c, pid, start=mark, frames=10)

            listed = await ok("list-participant-replicas", "--source-stage-arn", a["arn"], "--participant-id", pid)
            assert listed["replicas"] == [{"sourceStageArn": a["arn"], "participantId": pid,
                                           "sourceSessionId": src_session, "destinationStageArn": b["arn"],
                                           "destinationSessionId": dst_session, "replicationState": "ACTIVE"}], listed
            part = (await ok("get-participant", "--stage-arn", b["arn"], "--session-id", dst_session,
                             "--participant-id", pid))["participant"]
            assert (part["replicationType"], part["replicationState"], part["sourceStageArn"],
                    part["attributes"]) == ("REPLICA", "ACTIVE", a["arn"], {"role": "host", "origin": "cli"}), part

            p = await fails("start-participant-replication", "--source-stage-arn", a["arn"],
                            "--destination-stage-arn", b["arn"], "--participant-id", pid)
            assert p.returncode in (254, 255) and "(ConflictException)" in p.stderr and pid in p.stderr, (
                f"exit {p.returncode}: {p.stderr}")

            out = await ok("stop-participant-replication", "--source-stage-arn", a["arn"],
                           "--destination-stage-arn", b["arn"], "--participant-id", pid)
            for k, val in HEADER_MEMBERS.items():
                assert out.get(k) == val, f"the CLI's output of stop-participant-replication: {out}"
            listed = await ok("list-participant-replicas", "--source-stage-arn", a["arn"], "--participant-id", pid,
                              "--page-size", "1")
            assert [(r["destinationStageArn"], r["replicationState"]) for r in listed["replicas"]] == \
                [(b["arn"], "STOPPED")], listed

            p = await fails("stop-participant-replication", "--source-stage-arn", a["arn"],
                            "--destination-stage-arn", b["arn"], "--participant-id", pid)
            assert p.returncode in (254, 255) and "(ResourceNotFoundException)" in p.stderr, f"exit {p.returncode}: {p.stderr}"
            p = await fails("start-participant-replication", "--source-stage-arn", a["arn"],
                            "--destination-stage-arn", a["arn"], "--participant-id", pid)
            assert p.returncode in (254, 255) and "(ValidationException)" in p.stderr, f"exit {p.returncode}: {p.stderr}"
        finally:
            await c.close()

    arun(go(), timeout=90)
