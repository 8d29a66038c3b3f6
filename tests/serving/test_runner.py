"""The process model's bundle check: what `serve` says about a verified bundle, and the verification a child process
runs for `serve --workers N` and for the supervisor's SIGHUP (a refusal comes back as a message, not a raise)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from deepmetric.serving.runner import describe, verify_in_child


def test_describe_and_verify_in_a_child_process(loaded, deploy_bundle, tmp_path):
    folder, _, _ = deploy_bundle
    assert describe(loaded) == {"model_version": loaded.manifest["model_version"],
                                "index_version": loaded.manifest["index_version"], "index_factory": "Flat",
                                "gallery_size": 36, "dim": 16}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        good = pool.submit(verify_in_child, str(folder), 1).result()
        bad = pool.submit(verify_in_child, str(tmp_path), 1).result()
    assert good == describe(loaded)
    assert bad == {"error": f"bundle refused: manifest.json: missing in {tmp_path}"}
