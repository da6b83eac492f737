"""Debian's ffmpeg as an RTMP encoder: the command lines the ingest tests run."""

from __future__ import annotations

import subprocess


def push_args(ffmpeg: str, url: str, *, seconds: float = 2.0, size: str = "640x360", bframes: int = 0,
              profile: str = "baseline", realtime: bool = True, colour: str | None = None,
              noisy: bool = False) -> list[str]:
    """ffmpeg pushing a test pattern (or a solid `colour`) and a 440 Hz tone as H.264 +
    AAC in FLV over RTMP. `noisy` covers the picture in noise and encodes it almost
    losslessly: tens of Mbps, over any ingest bitrate limit."""
    video = f"color=c={colour}:s={size}:r=30" if colour else f"testsrc=size={size}:rate=30"
    return [ffmpeg, "-nostdin", "-v", "error", *(["-re"] if realtime else []),
            "-f", "lavfi", "-i", video,
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds), "-c:v", "libx264", "-profile:v", profile, "-bf", str(bframes),
            *(["-vf", "noise=alls=80:allf=t+u", "-qp", "2"] if noisy else []),
            "-g", "30", "-pix_fmt", "yuv420p", "-preset", "ultrafast",
            "-c:a", "aac", "-ar", "48000", "-f", "flv", url]


def push(ffmpeg: str, url: str, timeout: float = 30.0, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(push_args(ffmpeg, url, **kw), capture_output=True, text=True, timeout=timeout)
