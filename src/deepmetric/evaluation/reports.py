"""What the evaluate stage writes beside the headline metrics, from the embeddings it already has:

- the match thresholds (``thresholds.json``, format ``deepmetric.thresholds/1``): calibrated on the
  **validation** classes (the manifest's ``split == "val"`` rows, embedded here), judged on the test classes;
- the failure report (``failures.json``: per-class table, most confused class pairs, worst queries, per-category
  table), the per-class table as CSV for `dvc plots`, the worst-queries grid PNG;
- with ``evaluate.rerank``, MAP@R and Recall@1 after that re-ranking (extra keys; the headline stays plain);
- their flat figures for ``metrics.json`` (``dvc metrics diff``): FNMR and threshold per fmr, the failure summary,
  per-category Recall@1 / MAP@R when the manifest has a ``category`` column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from deepmetric.evaluation.failures import failure_report, per_class_table, worst_queries_grid
from deepmetric.evaluation.knn import GalleryRanking, relevant_counts
from deepmetric.evaluation.metrics import map_at_r
from deepmetric.evaluation.protocol import EvaluateConfig, TestSplit, validation_rows
from deepmetric.evaluation.rerank import rerank_search
from deepmetric.evaluation.verification import check_calibration, thresholds_document, verification_report


def check_validation_split(manifest: pd.DataFrame, cfg: EvaluateConfig) -> None:
    """Refuse, before anything is embedded, a validation split with too few negative pairs for ``evaluate.fmr``."""
    try:
        check_calibration(validation_rows(manifest)["label"].to_numpy(), cfg.fmr, cfg.negative_pairs,
                          name="evaluate.fmr", max_name="evaluate.negative_pairs")
    except ValueError as e:
        raise ValueError(f"{e} (the validation split is the data.val_classes slice of the training classes)") from None


def pooled_test_images(split: TestSplit, query: np.ndarray, gallery: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Every test image once, with its label: the queries, plus the gallery rows that are not also queries."""
    if gallery is None:
        return query, split.query["label"].to_numpy()
    extra = ~split.gallery["path"].isin(set(split.query["path"])).to_numpy()
    return (np.concatenate([query, gallery[extra]]),
            np.concatenate([split.query["label"].to_numpy(), split.gallery["label"].to_numpy()[extra]]))


def thresholds(validation: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
               cfg: EvaluateConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the verification report, the thresholds file) for ``evaluate.fmr`` at 95 % confidence."""
    report = verification_report(validation, test, fmr=cfg.fmr, max_negatives=cfg.negative_pairs,
                                 seed=cfg.pairs_seed, confidence=0.95)
    return report, thresholds_document(report, cfg.default_fmr)


def _class_names(split: TestSplit) -> dict[Any, str]:
    """Every test class's name by label: the queries' classes and the gallery's (the per-class table looks up the
    query classes only; a confused pair or a neighbour may be a gallery-only class)."""
    names = dict(zip(split.query["label"].tolist(), split.query["class_name"].astype(str).tolist(), strict=True))
    if split.gallery is not None:
        names.update(zip(split.gallery["label"].tolist(), split.gallery["class_name"].astype(str).tolist(),
                         strict=True))
    return names


def failures(ranking: GalleryRanking, split: TestSplit, cfg: EvaluateConfig) -> tuple[dict[str, Any], str]:
    """(failures.json's report, per_class.csv's text: every test class, worst MAP@R first)."""
    ql = split.query["label"].to_numpy()
    gl = ql if split.gallery is None else split.gallery["label"].to_numpy()
    names = _class_names(split)
    categories = split.query["category"].astype(str).to_numpy() if "category" in split.query else None
    f = cfg.failures
    k = min(f.k, ranking.width)
    report = failure_report(ranking, ql, gl, query_categories=categories, class_names=names, k=k, worst=f.worst,
                            pairs=f.pairs, classes=f.classes)
    for pair in report["confused_pairs"]:  # names beside labels: what an operator reads
        pair["class_a_name"], pair["class_b_name"] = names.get(pair["class_a"]), names.get(pair["class_b"])
    for w in report["worst_queries"]:
        w["class_name"] = names.get(w["label"])
    return report, per_class_table(ranking, ql, names).to_csv(index=False, float_format="%.6g")


def decision_metrics(verification: dict[str, Any], report: dict[str, Any]) -> dict[str, float]:
    """Flat keys for metrics.json: ``fnmr@fmr=F`` and ``threshold@fmr=F`` (test classes), the failure summary
    and ``category/C/map@r`` / ``category/C/recall@1``."""
    out: dict[str, float] = {}
    for f, point in verification["test"]["operating_points"].items():
        out[f"fnmr@fmr={f}"] = point["fnmr"]
        out[f"threshold@fmr={f}"] = point["threshold"]
    out.update(report["summary"])
    for row in report.get("per_category", []):
        out[f"category/{row['category']}/recall@1"] = row["recall@1"]
    return out


def worst_queries_png(report: dict[str, Any], split: TestSplit, root: str, spec, limits) -> bytes:
    """The worst queries' grid, its images decoded as the evaluation decodes them (under the data limits)."""
    from deepmetric.data.images import safe_join
    from deepmetric.data.transforms import load_eval_image

    def loader(df: pd.DataFrame):
        return lambda i: load_eval_image(safe_join(root, df["path"].iloc[i]), spec, limits=limits)

    gallery = split.query if split.gallery is None else split.gallery
    names = _class_names(split)
    worst = [{**w, "label": names.get(w["label"], w["label"]),
              "neighbours": [{**nb, "label": names.get(nb["label"], nb["label"])} for nb in w["neighbours"]]}
             for w in report["worst_queries"]]
    return worst_queries_grid(worst, loader(split.query), loader(gallery))


RERANK_NEIGHBOURHOOD = {"none": 0, "qe": 2, "dba": 2, "kreciprocal": 21}
"""Gallery items each re-ranking needs per query at its `rerank_search` setting (k-reciprocal: k1 = 20, plus one)."""


def check_rerank(split: TestSplit, method: str) -> None:
    """Refuse, before anything is embedded, a test split whose gallery is smaller than ``method``'s neighbourhood."""
    available = len(split.query) - 1 if split.gallery is None else len(split.gallery)
    need = RERANK_NEIGHBOURHOOD[method]
    if available < need:
        raise ValueError(f"evaluate.rerank={method} re-ranks among {need} neighbours per query, but the test split "
                         f"gives each query {available}: use a larger test split or another evaluate.rerank")


def reranked_metrics(split: TestSplit, query: np.ndarray, gallery: np.ndarray | None, method: str) -> dict[str, float]:
    """``rerank/map@r`` and ``rerank/recall@1`` of the test split after ``method`` (`rerank.RERANKINGS`), from
    each query's re-ranked top max(R, 21) (21: k-reciprocal's neighbourhood k1 = 20 plus one); {} for none."""
    if method == "none":
        return {}
    ql = split.query["label"].to_numpy()
    gl = ql if gallery is None else split.gallery["label"].to_numpy()
    r = relevant_counts(ql, gl, gallery is None)
    available = len(gl) - (1 if gallery is None else 0)
    k = min(available, max(int(r.max(initial=0)), RERANK_NEIGHBOURHOOD["kreciprocal"]))
    _, ids = rerank_search(query, gallery, k, method)
    labels = gl[ids]
    valid = r > 0
    return {"rerank/map@r": map_at_r(labels[valid], ql[valid], r[valid]),
            "rerank/recall@1": float((labels[valid, 0] == ql[valid]).mean())}
