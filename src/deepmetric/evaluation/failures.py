"""Where retrieval fails: per-class and per-category metrics, the most confused class pairs, the worst queries.

Everything reads one `rank_gallery` result (its top lists, each query's AP@R and the rank of its nearest correct
item), a query chunk at a time; nothing is N×N. Tables are pandas DataFrames (worst first), the report a
JSON-able dict: what the evaluate stage writes for `dvc metrics diff` / `dvc plots`. Ranks in the outputs are
1-based (rank 1 = the top neighbour), as a person reads a result list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.evaluation.knn import GalleryRanking
from deepmetric.evaluation.metrics import per_query_metrics

_CHUNK = 65536


def _check_k(ranking: GalleryRanking, k: int) -> None:
    if not 1 <= k <= ranking.width:
        raise ValueError(f"k={k} outside [1, {ranking.width}]: the ranking keeps {ranking.width} neighbours per "
                         "query (rank_gallery's width)")


def _grouped(keys: np.ndarray, per_query: dict[str, np.ndarray], valid: np.ndarray, name: str) -> pd.DataFrame:
    df = pd.DataFrame({name: keys[valid], "map@r": per_query["map@r"][valid],
                       "recall@1": per_query["recall@1"][valid]})
    table = df.groupby(name, sort=True).agg(queries=("map@r", "size"), **{"map@r": ("map@r", "mean"),
                                                                        "recall@1": ("recall@1", "mean")})
    return table.reset_index().sort_values(["map@r", "recall@1", name], kind="stable").reset_index(drop=True)


def per_class_table(ranking: GalleryRanking, query_labels: np.ndarray,
                    class_names: dict[Any, str] | None = None) -> pd.DataFrame:
    """One row per query class with R > 0: ``label``, ``queries``, ``map@r``, ``recall@1`` (+ ``class_name``),
    worst MAP@R first."""
    labels = np.asarray(query_labels)
    table = _grouped(labels, per_query_metrics(ranking), ranking.relevant > 0, "label")
    if class_names is not None:
        table.insert(1, "class_name", table["label"].map(class_names))
    return table


def per_category_table(ranking: GalleryRanking, query_categories: np.ndarray) -> pd.DataFrame:
    """One row per category of the queries (e.g. SOP's super-classes): ``category``, ``queries``, ``map@r``,
    ``recall@1``, worst first."""
    categories = np.asarray(query_categories)
    if len(categories) != len(ranking.relevant):
        raise ValueError(f"{len(categories)} categories for {len(ranking.relevant)} queries")
    return _grouped(categories, per_query_metrics(ranking), ranking.relevant > 0, "category")


def confused_pairs(ranking: GalleryRanking, query_labels: np.ndarray, gallery_labels: np.ndarray, k: int = 5,
                   top: int = 20) -> pd.DataFrame:
    """The class pairs whose images most often appear in each other's top ``k``.

    For classes a ≠ b: ``a_to_b`` = top-``k`` slots of a's queries filled by b's images, ``b_to_a`` the converse,
    ``share`` = (a_to_b + b_to_a) / ((queries of a + queries of b) · k): the fraction of the two classes' result
    slots taken by the other. ``top`` pairs, largest share first (ties: most slots, then labels)."""
    _check_k(ranking, k)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    classes, q_class = np.unique(ql, return_inverse=True)
    parts = []
    for a in range(0, len(ql), _CHUNK):
        ids = ranking.ids[a:a + _CHUNK, :k]
        wrong = (ids >= 0) & ~ranking.hits[a:a + _CHUNK, :k]
        src = np.broadcast_to(ql[a:a + _CHUNK, None], ids.shape)[wrong]
        dst = gl[ids[wrong]]
        pairs = pd.DataFrame({"src": src, "dst": dst}).value_counts().rename("slots").reset_index()
        parts.append(pairs)
    columns = ["class_a", "class_b", "a_to_b", "b_to_a", "share"]
    if not parts or sum(len(p) for p in parts) == 0:
        return pd.DataFrame(columns=columns)
    directed = pd.concat(parts).groupby(["src", "dst"], sort=False)["slots"].sum()
    queries = pd.Series(np.bincount(q_class), index=classes)
    # unordered pair: (min, max) by sort order of the labels
    src, dst = directed.index.get_level_values(0), directed.index.get_level_values(1)
    swap = np.asarray(src > dst)
    a = np.where(swap, dst, src)
    b = np.where(swap, src, dst)
    frame = pd.DataFrame({"class_a": a, "class_b": b, "a_to_b": np.where(swap, 0, directed.values),
                          "b_to_a": np.where(swap, directed.values, 0)})
    frame = frame.groupby(["class_a", "class_b"], as_index=False)[["a_to_b", "b_to_a"]].sum()
    n_a = queries.reindex(frame["class_a"]).fillna(0).to_numpy()
    n_b = queries.reindex(frame["class_b"]).fillna(0).to_numpy()
    frame["share"] = (frame["a_to_b"] + frame["b_to_a"]) / ((n_a + n_b) * k)
    frame["_slots"] = frame["a_to_b"] + frame["b_to_a"]
    frame = frame.sort_values(["share", "_slots", "class_a", "class_b"], ascending=[False, False, True, True],
                              kind="stable")
    return frame.drop(columns="_slots").head(top).reset_index(drop=True)[columns]


def worst_queries(ranking: GalleryRanking, query_labels: np.ndarray, gallery_labels: np.ndarray, n: int = 16,
                  k: int = 5) -> list[dict[str, Any]]:
    """The ``n`` queries (with R > 0) of lowest AP@R, then farthest nearest correct item: each with its top ``k``
    (gallery index, label, similarity, correct), and its nearest correct gallery item, its rank and similarity."""
    _check_k(ranking, k)
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    per_query = per_query_metrics(ranking)
    candidates = np.flatnonzero(ranking.relevant > 0)
    ap = per_query["map@r"][candidates]
    order = np.lexsort((candidates, -ranking.first_hit[candidates], ap))[:n]
    out = []
    for i in candidates[order].tolist():
        ids = ranking.ids[i, :k]
        out.append({
            "query": i, "label": _plain(ql[i]), "map@r": float(per_query["map@r"][i]),
            "relevant": int(ranking.relevant[i]),
            "neighbours": [{"gallery": int(j), "label": _plain(gl[j]), "similarity": float(s), "correct": bool(h)}
                           for j, s, h in zip(ids.tolist(), ranking.sims[i, :k].tolist(),
                                              ranking.hits[i, :k].tolist(), strict=True) if j >= 0],
            "nearest_correct": {"gallery": int(ranking.nearest_correct[i]),
                                "rank": int(ranking.first_hit[i]) + 1,
                                "similarity": float(ranking.nearest_correct_sim[i])},
        })
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def failure_report(ranking: GalleryRanking, query_labels: np.ndarray, gallery_labels: np.ndarray,
                   query_categories: np.ndarray | None = None, class_names: dict[Any, str] | None = None,
                   k: int = 5, worst: int = 16, pairs: int = 20, classes: int = 50) -> dict[str, Any]:
    """All of the above as one JSON-able dict: ``summary`` (flat numbers for `dvc metrics diff`), ``worst_classes``
    (``classes`` rows), ``confused_pairs``, ``worst_queries``, ``per_category`` (only with categories)."""
    per_class = per_class_table(ranking, query_labels, class_names)
    summary: dict[str, Any] = {
        "classes": int(len(per_class)),
        "classes_map@r_below_0.5": int((per_class["map@r"] < 0.5).sum()),
        "classes_recall@1_below_0.5": int((per_class["recall@1"] < 0.5).sum()),
        "worst_class_map@r": float(per_class["map@r"].iloc[0]) if len(per_class) else float("nan"),
        "median_class_map@r": float(per_class["map@r"].median()) if len(per_class) else float("nan"),
    }
    report: dict[str, Any] = {
        "summary": summary,
        "worst_classes": _records(per_class.head(classes)),
        "confused_pairs": _records(confused_pairs(ranking, query_labels, gallery_labels, k, pairs)),
        "worst_queries": worst_queries(ranking, query_labels, gallery_labels, worst, k),
    }
    if query_categories is not None:
        report["per_category"] = _records(per_category_table(ranking, query_categories))
        for row in report["per_category"]:
            summary[f"category/{row['category']}/map@r"] = row["map@r"]
    return report


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def worst_queries_grid(worst: Sequence[dict[str, Any]], load_query: Callable[[int], np.ndarray],
                       load_gallery: Callable[[int], np.ndarray], title: str | None = None) -> bytes:
    """A PNG: one row per worst query — the query, its top neighbours (green: correct, red: wrong) and, last, the
    nearest correct gallery image with its rank. ``load_query(i)`` / ``load_gallery(j)`` return an HxWx3 image."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not worst:
        raise ValueError("no worst queries to draw")
    cols = max(len(w["neighbours"]) for w in worst) + 2
    fig, axes = plt.subplots(len(worst), cols, figsize=(1.3 * cols, 1.45 * len(worst)), squeeze=False)

    def show(ax, img, colour: str | None, text: str) -> None:
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(text, fontsize=6)
        for s in ax.spines.values():
            s.set_edgecolor(colour or "black")
            s.set_linewidth(3 if colour else 0.5)

    for row, w in enumerate(worst):
        for ax in axes[row]:
            ax.axis("off")
        axes[row, 0].axis("on")
        show(axes[row, 0], load_query(w["query"]), None, f"query {w['label']}"[:18])
        for col, nb in enumerate(w["neighbours"], start=1):
            axes[row, col].axis("on")
            show(axes[row, col], load_gallery(nb["gallery"]), "green" if nb["correct"] else "red",
                 f"{nb['label']} {nb['similarity']:.2f}"[:18])
        nc = w["nearest_correct"]
        axes[row, -1].axis("on")
        show(axes[row, -1], load_gallery(nc["gallery"]), "green", f"nearest correct: rank {nc['rank']}")
    fig.suptitle(title or "Worst queries: top neighbours (green correct, red wrong), nearest correct item last",
                 fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
