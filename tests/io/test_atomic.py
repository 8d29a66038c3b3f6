import pandas as pd
import pytest

from deepmetric.io.atomic import atomic_path, write_bytes
from deepmetric.io.datasets import FileTreeDataset, JSONDataset, ParquetDataset


def test_failed_write_leaves_previous_file(tmp_path):
    target = tmp_path / "a.json"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_unserialisable_json_keeps_old_metrics(tmp_path):
    ds = JSONDataset(str(tmp_path / "m.json"))
    ds.save({"map@r": 0.5})
    with pytest.raises(Exception, match="not JSON serializable"):
        ds.save({"bad": object()})
    assert ds.load() == {"map@r": 0.5}


def test_parquet_round_trip(tmp_path):
    ds = ParquetDataset(str(tmp_path / "x" / "m.parquet"))
    df = pd.DataFrame({"path": ["a.png"], "label": [1]})
    ds.save(df)
    pd.testing.assert_frame_equal(ds.load(), df)


def test_file_tree_replaces_whole_folder_and_refuses_escape(tmp_path):
    ds = FileTreeDataset(str(tmp_path / "tree"))
    ds.save({"a/b.txt": b"1", "c.txt": b"2"})
    ds.save({"d.txt": b"3"})
    assert sorted(p.name for p in (tmp_path / "tree").rglob("*")) == ["d.txt"]
    with pytest.raises(Exception, match="outside"):
        ds.save({"../evil.txt": b"x"})
    assert (tmp_path / "tree" / "d.txt").read_bytes() == b"3"
    assert not (tmp_path / "evil.txt").exists()


def test_missing_input_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(Exception, match="does not exist: run the stage"):
        JSONDataset(str(tmp_path / "nope.json")).load()


# --- writers killed with SIGKILL (real child processes) ------------------------------------------------------

_SLOW_WRITER = r"""
import sys, time
from deepmetric.io.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"x" * 1_000_000)
        f.flush()
        print("mid-write", flush=True)
        time.sleep(120)  # killed here
"""

_SWAP_KILLER = r"""
import os, signal, sys
import deepmetric.io.atomic as atomic
from deepmetric.io.datasets import FileTreeDataset

real_replace = os.replace
calls = []
def replace(src, dst):
    real_replace(src, dst)
    calls.append(dst)
    if len(calls) == 1:  # the old folder is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
atomic.os.replace = replace
FileTreeDataset(sys.argv[1]).save({"new.txt": b"new"})
"""


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def _start(code: str, *args: str):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)


def test_a_killed_writer_leaves_a_temp_that_the_next_write_removes(tmp_path):
    ckpt = tmp_path / "checkpoints"  # like the training checkpoint folder: several names, one folder
    write_bytes(ckpt / "epoch_2.pt", b"good")
    child = _start(_SLOW_WRITER, str(ckpt / "epoch_3.pt"))
    try:
        assert child.stdout.readline().strip() == "mid-write"
        (temp,) = _temps(ckpt)
        assert temp.startswith(f".epoch_3.pt.{child.pid}-")
        write_bytes(ckpt / "epoch_2.pt", b"good")  # the writer is alive: its temporary stays
        assert _temps(ckpt) == [temp]
    finally:
        child.kill()  # SIGKILL mid-write
        child.wait(timeout=30)
    assert child.returncode == -9
    assert _temps(ckpt) == [temp] and not (ckpt / "epoch_3.pt").exists()  # what a crash leaves
    write_bytes(ckpt / "epoch_4.pt", b"next")  # the next successful write in that folder cleans up
    assert _temps(ckpt) == [] and sorted(p.name for p in ckpt.iterdir()) == ["epoch_2.pt", "epoch_4.pt"]


def test_a_writer_killed_while_swapping_folders_is_rolled_back(tmp_path):
    from deepmetric.io.atomic import clean_stale_temps
    from deepmetric.io.datasets import FileTreeDataset

    FileTreeDataset(str(tmp_path / "bundle")).save({"old.txt": b"old"})
    child = _start(_SWAP_KILLER, str(tmp_path / "bundle"))
    child.wait(timeout=60)
    assert child.returncode == -9
    assert not (tmp_path / "bundle").exists() and len(_temps(tmp_path)) == 1  # killed between the two renames
    removed = clean_stale_temps(tmp_path)
    assert len(removed) == 1 and _temps(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["old.txt"]  # the old version is back


def test_pid_less_temps_of_earlier_versions_go_when_older_than_this_process(tmp_path):
    import os
    import time

    old = tmp_path / ".metrics.json.k3j5x_9q.tmp"
    old.mkdir()
    (old / "metrics.json").write_text("{")
    os.utime(old, (time.time() - 86400 * 3, time.time() - 86400 * 3))
    fresh = tmp_path / ".metrics.json.a1b2c3d4.tmp"  # made after this process started: maybe a live writer's
    fresh.mkdir()
    unrelated = tmp_path / ".cache"
    unrelated.mkdir()
    write_bytes(tmp_path / "metrics.json", b"{}")
    assert not old.exists() and fresh.exists() and unrelated.exists()
