"""`index.factory: auto`: the index kinds, their factory strings, the selection rule, and the benchmark that
measures them (benchmarks/index/run.py, its quick mode)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from deepmetric.index.auto import (
    EVIDENCE,
    IVF_MIN_POINTS_PER_LIST,
    KINDS,
    RECALL_TARGET,
    Measured,
    best_index,
    choose_factory,
    ivf_nlist,
    pq_m,
)
from deepmetric.index.build import apply_search_params, build_index

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "index" / "run.py"


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n,nlist", [(10_000, 256), (100_000, 1024), (10 ** 6, 4096), (10 ** 7, 16384),
                                     (3_000, 64), (624, 16), (623, 0), (1, 0)])
def test_ivf_nlist_is_the_power_of_two_near_4_sqrt_n_with_enough_training_points(n, nlist):
    assert ivf_nlist(n) == nlist


def test_ivf_nlist_never_starves_kmeans_and_grows_with_n():
    sizes = np.unique(np.logspace(2.7, 8, 300).astype(int))
    lists = [ivf_nlist(int(n)) for n in sizes]
    assert lists == sorted(lists)
    for n, nlist in zip(sizes, lists):
        assert nlist == 0 or (n >= IVF_MIN_POINTS_PER_LIST * nlist and nlist & (nlist - 1) == 0)
        assert nlist == 0 or nlist <= 2 * 4 * math.sqrt(n)


@pytest.mark.parametrize("dim,m", [(128, 32), (512, 128), (64, 16), (100, 25), (30, 6), (7, 1), (3, 1)])
def test_pq_m_is_a_divisor_near_a_quarter_of_dim(dim, m):
    assert pq_m(dim) == m and dim % m == 0


@pytest.mark.parametrize("bad", [0, -5, 2.5, "100", True, None])
def test_sizes_must_be_positive_integers(bad):
    with pytest.raises(ValueError, match=r"n must be a positive integer"):
        ivf_nlist(bad)
    with pytest.raises(ValueError, match=r"dim must be a positive integer"):
        pq_m(bad)


def test_ivf_kinds_refuse_a_gallery_too_small_for_16_lists():
    with pytest.raises(ValueError, match=r"IVF-Flat needs at least 624 vectors .* got n=600"):
        KINDS["ivf_flat"].factory(600, 128)
    assert KINDS["flat"].factory(600, 128) == "Flat" and KINDS["hnsw"].factory(1, 128) == "HNSW32"


@pytest.mark.parametrize("dim", [64, 128, 512, 768])
@pytest.mark.parametrize("n", [10 ** 4, 10 ** 6, 10 ** 8])
def test_every_factory_string_is_one_faiss_builds_with_the_lists_and_codes_it_says(n, dim):
    for kind in KINDS.values():
        index = faiss.index_factory(dim, kind.factory(n, dim), faiss.METRIC_INNER_PRODUCT)
        assert index.d == dim and index.metric_type == faiss.METRIC_INNER_PRODUCT
        if kind.trains:
            ivf = faiss.extract_index_ivf(index)
            assert ivf.nlist == ivf_nlist(n)
            pq = getattr(faiss.downcast_index(ivf), "pq", None)
            assert pq is None or pq.M == pq_m(dim)
            assert kind.train_size(n) == min(n, 40 * ivf_nlist(n)) >= IVF_MIN_POINTS_PER_LIST * ivf.nlist
        else:
            assert kind.train_size(n) == 0 and index.is_trained


# OPQ (its factory string is checked above) trains its rotation for 50 rounds: ~10 s of CPU even at 8-d.
@pytest.mark.parametrize("name", [k for k in KINDS if k != "opq_ivf_pq"])
def test_each_kind_builds_with_the_project_builder_and_takes_its_search_knob(name):
    kind = KINDS[name]
    x = _unit(3000, 8)  # 8-d: PQ2, so faiss' polysemous training (on in build_index) takes seconds
    knob = {kind.search_param: kind.sweep[2]} if kind.search_param else {}
    index = build_index(x, kind.factory(len(x), 8), knob, kind.build.get("ef_construction"))
    assert index.ntotal == 3000 and index.is_trained
    _, found = index.search(x[:50], 10)
    assert (found >= 0).all()
    if kind.search_param:
        apply_search_params(index, {kind.search_param: kind.sweep[3]})


def test_sweeps_rise_by_half_octaves():
    for kind in KINDS.values():
        if kind.search_param:
            steps = np.array(kind.sweep, dtype=float)
            assert (np.diff(steps) > 0).all() and (steps[1:] / steps[:-1] <= 2.0 + 1e-9).all()
    assert KINDS["ivf_flat"].sweep[:8] == (1, 2, 3, 4, 6, 8, 11, 16)


def _m(kind, recall, qps, size):
    return Measured(kind, recall, qps, size)


def test_best_index_takes_the_fastest_of_those_at_the_recall_target():
    fast_but_inexact = _m("ivf_pq", RECALL_TARGET - 0.001, 10_000, 10)
    chosen = best_index([_m("flat", 1.0, 300, 500), _m("hnsw", 0.96, 4000, 700), fast_but_inexact])
    assert chosen.kind == "hnsw"


def test_best_index_breaks_a_near_tie_for_the_smaller_index():
    assert best_index([_m("hnsw", 0.97, 1000, 700), _m("ivf_sq8", 0.95, 901, 150)]).kind == "ivf_sq8"
    assert best_index([_m("hnsw", 0.97, 1000, 700), _m("ivf_sq8", 0.95, 899, 150)]).kind == "hnsw"


def test_best_index_is_none_when_nothing_reaches_the_target():
    assert best_index([_m("ivf_pq", 0.72, 9000, 10)]) is None and best_index([]) is None


def test_quick_benchmark_runs_every_stage_and_flat_is_exact(tmp_path):
    """The benchmark script end to end at 10^4 × 128-d (one kind per mechanism: exact, graph, shared IVF
    quantizer): its ground truth agrees with faiss' exact index, its figures are sane, it says what maps."""
    out = tmp_path / "quick.json"
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--kinds", "flat", "hnsw", "ivf_flat",
                        "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["kind"]: r for r in result["rows"]}
    assert set(rows) == {"flat", "hnsw", "ivf_flat"} and all("error" not in r for r in rows.values())
    assert rows["flat"]["recall@10"] == 1.0  # the chunked ground truth is exactly what IndexFlatIP returns
    for r in rows.values():
        assert r["n"] == 10_000 and r["dim"] == 128
        assert r["index_bytes"] > 10_000 * 128 // 4 and r["peak_rss"] > r["rss_baseline"] > 0
        assert r["qps_batch1"] > 0 and r["qps_batch32"] > 0 and r["build_cpu_s"] >= 0
        assert all(m["same_results"] for m in r["mmap"].values())
    assert rows["hnsw"]["recall@10"] >= RECALL_TARGET and rows["ivf_flat"]["recall@10"] >= RECALL_TARGET
    assert rows["flat"]["mmap"]["IO_FLAG_MMAP_IFC"]["mapped"] and not rows["flat"]["mmap"]["IO_FLAG_MMAP"]["mapped"]
    assert rows["ivf_flat"]["mmap"]["IO_FLAG_MMAP"]["mapped"]
    sweep = rows["ivf_flat"]["search_stage"]["sweep"]
    assert [s["value"] for s in sweep] == list(KINDS["ivf_flat"].sweep[:len(sweep)])
    assert sweep[-1]["recall@10"] >= RECALL_TARGET > sweep[-2]["recall@10"]
    assert result["winners"][0]["kind"] in rows and "| 128 | 10^4 | Flat | `Flat` |" in p.stdout


RESULTS = ROOT / "benchmarks" / "index" / "results.json"


def test_the_rule_encodes_the_committed_benchmark_winners():
    """EVIDENCE is the benchmark's `winners` (best_index applied to each measured size and dimension): rerunning
    the benchmark with other results fails here until the rule follows."""
    result = json.loads(RESULTS.read_text())
    rows = [r for r in result["rows"] if "recall@10" in r]
    for w in result["winners"]:
        ms = [Measured(r["kind"], r["recall@10"], r["qps_batch1"], r["index_bytes"], r["search"])
              for r in rows if (r["n"], r["dim"]) == (w["n"], w["dim"])]
        best = best_index(ms)
        assert best is not None and best.kind == w["kind"] and dict(best.search) == w["search"]
    assert {(e.dim, e.n, e.kind, tuple(e.search.items())) for e in EVIDENCE} == {
        (w["dim"], w["n"], w["kind"], tuple(w["search"].items())) for w in result["winners"]}
    for e in EVIDENCE:
        r = next(r for r in rows if (r["n"], r["dim"], r["kind"]) == (e.n, e.dim, e.kind))
        assert (e.recall_at_10, e.qps_batch1) == (r["recall@10"], r["qps_batch1"])


@pytest.mark.parametrize("e", EVIDENCE, ids=lambda e: f"{e.dim}d-{e.n}")
def test_choose_factory_at_a_measured_size_is_that_sizes_winner(e):
    choice = choose_factory(e.n, e.dim)
    assert choice.kind == e.kind and choice.search == dict(e.search)
    assert choice.factory == KINDS[e.kind].factory(e.n, e.dim) and choice.train_size == KINDS[e.kind].train_size(e.n)
    assert f"{e.n:,} × {e.dim}-d" in choice.why and "above the largest" not in choice.why


def test_between_sizes_the_next_measured_size_decides_and_its_knob_is_kept():
    sizes = sorted({e.n for e in EVIDENCE if e.dim == 128})
    for small, large in zip(sizes, sizes[1:]):
        e = next(e for e in EVIDENCE if (e.dim, e.n) == (128, large))
        choice = choose_factory(3 * small, 100)  # 100-d: the 128-d figures
        assert choice.kind == e.kind
        assert all(choice.search[k] == min(v, ivf_nlist(3 * small)) for k, v in e.search.items())


def test_beyond_the_measured_range_the_largest_decides_and_says_so():
    top = max((e for e in EVIDENCE if e.dim == max(x.dim for x in EVIDENCE)), key=lambda e: e.n)
    choice = choose_factory(10 * top.n, 4 * top.dim)
    assert choice.kind == top.kind
    assert f"dim {4 * top.dim} is above the largest measured ({top.dim})" in choice.why
    assert "n is above the largest measured" in choice.why


@pytest.mark.parametrize("n", [1, 50, 623, 624, 5_000, 123_456, 10 ** 6, 3 * 10 ** 7])
@pytest.mark.parametrize("dim", [16, 128, 384, 1024])
def test_every_choice_is_a_buildable_faiss_index_with_a_knob_it_has(n, dim):
    choice = choose_factory(n, dim)
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    kind = KINDS[choice.kind]
    assert set(choice.search) == ({kind.search_param} if kind.search_param else set())
    if "nprobe" in choice.search:
        assert 1 <= choice.search["nprobe"] <= faiss.extract_index_ivf(index).nlist
        assert n >= IVF_MIN_POINTS_PER_LIST * faiss.extract_index_ivf(index).nlist
    assert choice.train_size <= n


def test_choose_factory_refuses_what_is_not_a_size():
    with pytest.raises(ValueError, match=r"n must be a positive integer, got 0"):
        choose_factory(0, 128)
    with pytest.raises(ValueError, match=r"dim must be a positive integer, got -1"):
        choose_factory(1000, -1)
