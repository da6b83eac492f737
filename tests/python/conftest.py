"""Fixtures for the boto3 / AWS CLI / raw-HTTP suite.

Every test talks to a real `onstage serve` process. One server runs for the whole
session (with a handful of extra accounts configured); tests that need a server of
their own (restarts, other configuration) start one with `server_factory`, which
stops everything it started when the test ends.

The binary comes from $ONSTAGE_BIN, by default <repo>/target/debug/onstage.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from helpers import DEV, SECOND, Creds, config_toml, pool_creds, POOL_SIZE

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("ONSTAGE_BIN", REPO / "target" / "debug" / "onstage"))
REGION = "us-east-1"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `onstage serve` process on a free TCP port and a free UDP port."""

    def __init__(self, data_dir: Path, config_text: str | None = None, extra_args=(), env=None,
                 port: int | None = None, media_port: int | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = None
        if config_text is not None:
            self.config_path = self.data_dir.parent / f"{self.data_dir.name}.toml"
            self.config_path.write_text(config_text)
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.port = port or free_tcp_port()
        self.media_port = media_port or free_udp_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "Server":
        if not BINARY.exists():
            pytest.exit(f"onstage binary not found at {BINARY}: build it with `cargo build -p onstage` "
                        "or set ONSTAGE_BIN", returncode=3)
        args = [str(BINARY), "serve", "--listen", self.host, "--media-port", str(self.media_port),
                "--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        # RTMP ingest listens on 1935 by default: servers of the suites run side by
        # side, so only those that ask for RTMP get it (on a free port).
        if "--rtmp-port" not in self.extra_args:
            args += ["--rtmp-port", "0"]
        args += self.extra_args
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONSTAGE_")}
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"onstage exited with {self.proc.returncode} during start-up:\n{self.log()}")
            try:
                r = requests.get(f"{self.url}/healthz", timeout=1)
                if r.status_code == 200:
                    return self
                last = r.status_code
            except requests.RequestException as e:
                last = e
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"onstage did not become healthy in {timeout}s (last: {last}):\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> "Server":
        self.stop()
        # The same port keeps the public URL (and so the tokens' URLs) unchanged.
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.start()
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def client(self, creds: Creds = DEV, **config):
        cfg = Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=64,
            parameter_validation=False,  # let the server do (and be tested on) the validation
            **config,
        )
        return boto3.client(
            "ivs-realtime",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            config=cfg,
        )


@pytest.fixture(scope="session")
def tmp_root():
    d = Path(tempfile.mkdtemp(prefix="onstage-pytest-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


_counter = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_root):
    """The shared server: development key plus the second account and a pool of accounts."""
    keys = [SECOND] + [pool_creds(i) for i in range(POOL_SIZE)]
    s = Server(tmp_root / "main", config_text=config_toml(keys))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def server_factory(tmp_root):
    """Starts extra servers (own data dir unless given); stops them all afterwards."""
    started: list[Server] = []

    def make(data_dir: Path | None = None, config_text: str | None = None, extra_args=(), env=None,
             start: bool = True) -> Server:
        d = data_dir or tmp_root / f"extra-{next(_counter)}"
        s = Server(d, config_text=config_text, extra_args=extra_args, env=env)
        started.append(s)
        if start:
            s.start()
        return s

    yield make
    for s in started:
        s.stop()


# --- real WebRTC peers (aiortc), for the suites that use them ------------------------
@pytest.fixture(scope="session")
def loopback_ice():
    """aioice offers no loopback candidate by default and onstage listens on
    127.0.0.1: suites with real peers use this (an autouse fixture of their own
    conftest depends on it), the rest never import aiortc."""
    media = REPO / "tests" / "python" / "media"
    if str(media) not in sys.path:
        sys.path.insert(0, str(media))
    import media_peers

    media_peers.use_loopback_ice()
    yield
    media_peers.restore_ice()


@pytest.fixture
def arun():
    """Runs a coroutine in a fresh event loop with an overall time limit."""
    import asyncio

    def run(coro, timeout: float = 60.0):
        async def bounded():
            return await asyncio.wait_for(coro, timeout)

        return asyncio.run(bounded())

    return run


@pytest.fixture(scope="session")
def ivs(server):
    """boto3 client of the development account 000000000000."""
    return server.client(DEV)


@pytest.fixture(scope="session")
def ivs2(server):
    """boto3 client of the second account 111111111111."""
    return server.client(SECOND)


_pool = itertools.count()


@dataclass
class Account:
    creds: Creds
    client: object


@pytest.fixture
def fresh_account(server):
    """An account no other test has used (clean public-key quota, empty lists)."""
    i = next(_pool)
    if i >= POOL_SIZE:
        pytest.fail("the pool of fresh accounts is exhausted: raise POOL_SIZE in helpers.py")
    creds = pool_creds(i)
    return Account(creds, server.client(creds))


@pytest.fixture
def stage(ivs):
    """A stage of the development account, deleted afterwards."""
    resp = ivs.create_stage(name=f"fixture-{next(_counter)}")
    yield resp["stage"]
    try:
        ivs.delete_stage(arn=resp["stage"]["arn"])
    except ivs.exceptions.ResourceNotFoundException:
        pass


@pytest.fixture(scope="session")
def aws_cli():
    exe = Path(sys.executable).parent / "aws"
    if not exe.exists():
        found = shutil.which("aws")
        if not found:
            pytest.fail("the AWS CLI (`awscli` from tests/python/requirements.txt) is not installed")
        exe = Path(found)
    return exe
