"""`invoke serve` as a real subprocess on 127.0.0.1 for the server and LIBERO tests (port 0: the server picks a free
one and prints it). Every wait is bounded; stop() sends SIGTERM and reaps the process by its pid."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
READY = re.compile(r"serving \S+ \(plan \S+\) on ws://127\.0\.0\.1:(\d+)")


class ServeProcess:
    def __init__(self, *args: str, timeout: float = 180.0):
        self.cmd = [sys.executable, "-m", "invoke", "serve", "--host", "127.0.0.1", *args]
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = self._wait_ready(timeout)

    def _pump(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _wait_ready(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:  # exited before serving (the error cases)
                self.proc.wait(timeout=30)
                return None
            self.lines.append(line)
            if m := READY.search(line):
                return int(m.group(1))
        self.kill()
        raise AssertionError(f"invoke serve not ready in {timeout} s:\n" + "\n".join(self.lines))

    def output(self, settle: float = 0.0) -> str:
        deadline = time.monotonic() + settle
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()) or 0.01)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return "\n".join(self.lines)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

