"""Milvus for the tests: milvus-lite run as a real gRPC server in its own process (`milvus-lite server`), so that
a test can stop it and start it again on the same port and data folder (an outage and its recovery), and several
processes (a server, `gallery add`) can use one store at once. Importable as ``tests.store_fixtures``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures import free_port


class MilvusLiteServer:
    """``milvus-lite server --data-dir DIR --port P`` on 127.0.0.1; :meth:`stop` / :meth:`start` keep the port
    and the data."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, seconds: float = 60) -> MilvusLiteServer:
        code = "import sys; from milvus_lite.cmdline import main; sys.exit(main())"
        self.proc = subprocess.Popen([sys.executable, "-c", code, "server", "--data-dir", str(self.data_dir),
                                      "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited {self.proc.returncode}: {self.proc.stdout.read()!r}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"milvus-lite server did not listen on {self.port} in {seconds:.0f} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
