"""Write-to-temp-then-rename helpers: a failed write never leaves a half-written artefact, and a writer that was
killed (kill -9, OOM, power loss) does not leave its temporary behind for good.

Temporaries are hidden siblings of the target, ``.NAME.<pid>-<start>-<random>.tmp`` (a folder holding the new
``NAME``): ``pid`` and ``start`` (the process's start time in clock ticks since boot, from ``/proc``) name the
writer. After every successful write, :func:`clean_stale_temps` removes the temporaries in that folder whose
writer is gone (no process with that pid, or one that started at another time: a reused pid), and the
pid-less ones of earlier versions (``.NAME.<8 chars>.tmp``) older than the running process. A writer killed
while it swapped folders (old one moved aside, new one not yet in place) is rolled back: the old folder goes
back to its name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "clean_stale_temps", "write_bytes", "write_text"]

_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<start>\d+)-[A-Za-z0-9_]+\.tmp$")
_OLD_STYLE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # mkdtemp names before the pid was recorded
_OLD_SUFFIX = ".old"


def _start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``); None if there is no such
    process, 0 where ``/proc`` is unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    # Field 22 (starttime), counted after the command name, which is in parentheses and may hold spaces.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int) -> bool:
    if pid == os.getpid():
        return _start_ticks(pid) in (start, 0)
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = _start_ticks(pid)
    return now is not None and (now == start or now == 0)


def _process_started() -> float:
    """Wall-clock start of this process (for pid-less temporaries of earlier versions)."""
    ticks = _start_ticks(os.getpid())
    if ticks:
        try:
            uptime = float(Path("/proc/uptime").read_text().split()[0])
            return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            pass
    return _IMPORTED


_IMPORTED = time.time()


def clean_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of dead writers in ``folder`` (see the module docstring); returns what was removed.
    A temporary holding ``NAME.old`` while ``NAME`` is missing is first moved back to ``NAME``."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    started = None
    for entry in entries:
        m = _STALE.match(entry.name)
        if m:
            if _alive(int(m["pid"]), int(m["start"])):
                continue
        else:
            m = _OLD_STYLE.match(entry.name)
            if not m:
                continue
            started = _process_started() if started is None else started
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= started:
                    continue
            except FileNotFoundError:
                continue
        path = Path(entry.path)
        target = folder / m["name"]
        old = path / (m["name"] + _OLD_SUFFIX)
        if old.exists() and not target.exists() and not target.is_symlink():
            os.replace(old, target)  # killed between moving the old folder aside and moving the new one in
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    Works for files and for directories (whatever the body creates at the yielded path). On an exception
    the temporary is removed and ``target`` is left exactly as it was. After a successful write, temporaries
    of writers that died in the same folder are removed (:func:`clean_stale_temps`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    tag = f"{pid}-{_start_ticks(pid) or 0}-"
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}", suffix=".tmp", dir=target.parent))
    tmp = tmp_dir / target.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for {target}")
        if tmp.is_dir() and target.exists():
            # Directories cannot be replaced atomically in one call: move the old one aside first.
            old = tmp_dir / (target.name + _OLD_SUFFIX)
            os.replace(target, old)
            os.replace(tmp, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    clean_stale_temps(target.parent)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))
