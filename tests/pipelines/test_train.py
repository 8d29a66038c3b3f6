"""`kedro run --pipelines train` against the real catalog (rebased to a tmp dir) and the real parameter file."""

from __future__ import annotations

import json

import pandas as pd
import torch

from deepmetric.io.datasets import ParquetDataset
from tests.deploy_fixtures import data_params, make_dataset
from tests.pipelines.kedro_helpers import load_params, run_stage


def _params(root, checkpoint_dir, live_dir) -> dict:
    base = load_params("train")
    train = {**base["train"], "epochs": 2, "steps_per_epoch": 2, "embedding_dim": 16, "progress": False,
             "device": "cpu", "num_workers": 0, "cache": {**base["train"]["cache"], "mode": "off"},
             "batch": {"classes_per_batch": 3, "samples_per_class": 2}, "eval_batch_size": 16}
    return {"data": data_params(root), "train": train, "model": {**base["model"], "resize": 32, "crop": 32},
            "train_checkpoint_dir": str(checkpoint_dir), "train_live_dir": str(live_dir), "train_cache_dir": None}


def _tsv(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def test_the_model_file_is_a_function_of_its_inputs(tmp_path):
    """Two runs of the stage with the same inputs (no checkpoint to resume from), and a third resumed from the
    first's checkpoint, write the same model.pt, byte for byte: the epochs' seconds and images/s go to the DVCLive
    log and timings/train.json, not into the model (issue 23)."""
    torch.set_num_threads(1)
    root = tmp_path / "dataset"
    manifest = make_dataset(root, num_classes=8, train_classes=6)
    manifest.loc[manifest["label"].isin([4, 5]), "split"] = "val"
    ParquetDataset(str(tmp_path / "data/02_intermediate/manifest_validated.parquet")).save(manifest)
    model, live = tmp_path / "data/06_models/model.pt", tmp_path / "live"
    run_stage("train", tmp_path, _params(root, tmp_path / "first", live))
    first = model.read_bytes()
    timings = json.loads((tmp_path / "data/08_reporting/timings/train.json").read_text())
    seconds = _tsv(live / "plots/metrics/seconds.tsv")
    run_stage("train", tmp_path, _params(root, tmp_path / "second", live))
    assert model.read_bytes() == first
    # resumed from the first run's checkpoint (every epoch done: nothing left to train), the same file again
    run_stage("train", tmp_path, _params(root, tmp_path / "first", live))
    assert model.read_bytes() == first
    assert set(timings) == {"train_seconds"} and timings["train_seconds"] > 0
    assert seconds["step"].tolist() == [1, 2] and timings["train_seconds"] == round(seconds["seconds"].sum(), 1)
    payload = torch.load(model, map_location="cpu", weights_only=False)
    assert [row["epoch"] for row in payload["log"]] == [1, 2] and "val_map@r" in payload["log"][0]
    assert not {"seconds", "images_per_s"} & set(payload["log"][0])


def test_the_epochs_are_logged_with_dvclive(tmp_path):
    """DVCLive's files, as `dvc plots` and `dvc exp show` read them: a TSV per metric with the epoch as the step,
    metrics.json with the last epoch; the folder holds this run only (a second run starts it afresh)."""
    torch.set_num_threads(1)
    root = tmp_path / "dataset"
    manifest = make_dataset(root, num_classes=8, train_classes=6)
    manifest.loc[manifest["label"].isin([4, 5]), "split"] = "val"
    ParquetDataset(str(tmp_path / "data/02_intermediate/manifest_validated.parquet")).save(manifest)
    live = tmp_path / "live"
    (live / "plots/metrics").mkdir(parents=True)
    (live / "plots/metrics/stale.tsv").write_text("step\tstale\n0\t1\n")
    run_stage("train", tmp_path, _params(root, tmp_path / "ckpt", live))
    tsvs = {p.stem for p in (live / "plots/metrics").glob("*.tsv")}
    assert {"loss", "lr", "seconds", "images_per_s", "val_map@r", "val_recall@1"} <= tsvs
    assert not tsvs & {"epoch", "best_epoch", "stale"}
    for name in ("loss", "val_map@r", "images_per_s"):
        frame = _tsv(live / f"plots/metrics/{name}.tsv")
        assert list(frame.columns) == ["step", name] and frame["step"].tolist() == [1, 2]
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["step"] == 2 and summary["val_map@r"] == _tsv(live / "plots/metrics/val_map@r.tsv")["val_map@r"].iloc[-1]
    assert not (tmp_path / "data/08_reporting/train_log.csv").exists()
