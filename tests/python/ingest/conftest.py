"""Fixtures of the RTMP ingest suite (BEHAVIOUR §10): a server with RTMP ingest on a
free port, and Debian's ffmpeg as the encoder.

Builds on tests/python/conftest.py (`server_factory`); the encoder's command lines
are in encoder.py.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass

import pytest

from helpers import DEV


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ingest:
    server: object
    client: object
    rtmp_port: int
    rtmps_port: int

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/app/{key}"

    def secure_url(self, key: str) -> str:
        return f"rtmps://127.0.0.1:{self.rtmps_port}/app/{key}"


@pytest.fixture
def ingest(server_factory):
    """A server with RTMP and RTMPS (its development certificate) on free ports."""
    port, tls_port = free_tcp_port(), free_tcp_port()
    s = server_factory(extra_args=["--rtmp-port", str(port), "--rtmps-port", str(tls_port)])
    return Ingest(s, s.client(DEV), port, tls_port)


@pytest.fixture(scope="session")
def ffmpeg():
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("ffmpeg is not installed (scripts/test installs it)")
    return exe
