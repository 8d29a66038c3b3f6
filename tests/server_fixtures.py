"""Real processes of the serving side, for the tests of serving, the CLI and releases: `deepmetric` commands (in a
process of their own, in this one, or on an "inference host" where the training stack cannot be imported), a
server started with `deepmetric serve` on a free loopback port, and a small HTTP client for it (urllib, raw
sockets). Importable as ``tests.server_fixtures``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tests.fixtures import free_port

# The limits `start_server` gives every server (small, so that the refusals are cheap to provoke).
MAX_UPLOAD = 200_000
MAX_PIXELS = 1_000_000
MAX_IMAGES = 4
# What an inference host lacks (the `serve`/`host` extras install none of it).
TRAINING_STACK = ("torch", "torchvision", "kedro", "kedro_datasets", "great_expectations", "pytorch_metric_learning")


def deepmetric(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`deepmetric ARGS` in a process of its own (``python -m deepmetric.cli``), output captured as text."""
    return subprocess.run([sys.executable, "-m", "deepmetric.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def deepmetric_here(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`deepmetric ARGS` in this process (cheaper than a process each), stdout and stderr captured; its exit
    status as the program would have it (``main`` raises SystemExit for usage errors and refused bundles)."""
    from deepmetric.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def host_cmd(*args: str) -> list[str]:
    """The command line of `deepmetric ARGS` in a process where torch, Kedro, GX and PML cannot be imported (an
    inference host)."""
    code = ("import runpy, sys\n"
            f"for m in {TRAINING_STACK!r}: sys.modules[m] = None\n"
            f"sys.argv = ['deepmetric', *{list(args)!r}]\n"
            "runpy.run_module('deepmetric.cli', run_name='__main__')\n")
    return [sys.executable, "-c", code]


def host(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(host_cmd(*args), capture_output=True, text=True, timeout=300)


def multipart(files: list[tuple[str, str, bytes]], fields: list[tuple[str, str]] = ()) -> tuple[bytes, str]:
    """A multipart/form-data body of ``(field, file name, bytes)`` files and ``(field, text)`` fields, and its
    Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for field, filename, data in files:
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        parts.append(head + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(base: str, method: str, path: str, body: bytes | None = None, ctype: str | None = None):
    """(status, JSON body) of one request to the server at ``base``."""
    req = urllib.request.Request(base + path, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_images(base: str, path: str, files, fields=()):
    body, ctype = multipart(files, fields)
    return request(base, "POST", path, body, ctype)


def raw_http(base: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is on a fresh connection; the status, headers and body of the answer."""
    host_, port = base.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host_, int(port)), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(ln.split(": ", 1) for ln in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of process ``pid`` from /proc (VmRSS: resident now; VmHWM: its peak), MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


def start_server(bundle: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`deepmetric serve` over ``bundle`` (with the small limits above and ``extra`` flags) on a free port;
    (the process, its base URL) once it answers /healthz."""
    port = free_port()
    cmd = [sys.executable, "-m", "deepmetric.cli", "serve", "--bundle", str(bundle), "--host", "127.0.0.1",
           "--port", str(port), "--max-upload-bytes", str(MAX_UPLOAD), "--max-pixels", str(MAX_PIXELS),
           "--max-images", str(MAX_IMAGES), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    return proc, wait_healthy(proc, port)


def wait_healthy(proc: subprocess.Popen, port: int, seconds: float = 90) -> str:
    """The base URL once the server started as ``proc`` answers /healthz on ``port``; raise if it exits first."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {proc.stdout.read().decode()}")
        try:
            if request(base, "GET", "/healthz")[0] == 200:
                return base
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become healthy in {seconds:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
