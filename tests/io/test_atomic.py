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
