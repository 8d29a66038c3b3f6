"""Search a bundle with every image of a folder or a table, offline: ``deepmetric search --bundle B <folder|table>
--out results.csv [--html]``.

The queries are embedded by `deepmetric.index.bulk` (the bundle's model in shard workers, a progress bar, each
image cut to its box when the table gives one) and searched in the bundle's index. ``results.csv`` has one row per
query and neighbour: ``query`` (the path as listed), ``query_label`` (as the folder or table gives it; empty when
unknown), ``rank`` (1…k), the neighbour's ``id``, ``label``, ``class_name``, ``path``, ``score`` (inner product of
unit vectors), and ``same_class`` (the query's label is the neighbour's class name or label; empty when the query
has none). A rerun skips the queries the CSV already holds. The HTML page shows each query's image and its
neighbours' thumbnails (from the bundle; one self-contained file).
"""

from __future__ import annotations

import base64
import html
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.bundle.format import MODEL_FILE, BundleError, sha256
from deepmetric.bundle.reader import Bundle
from deepmetric.data.contract import boxes_of
from deepmetric.data.images import ImageLimits
from deepmetric.io.atomic import atomic_path

__all__ = ["RESULT_COLUMNS", "model_bytes", "results_page", "search_items"]

RESULT_COLUMNS = ("query", "query_label", "rank", "id", "label", "class_name", "path", "score", "same_class")
_SEARCH_CHUNK = 4096


def model_bytes(bundle: Bundle) -> bytes:
    """The bundle's ONNX model, checked against the manifest's sha256 (it is re-read for the worker processes)."""
    data = (bundle.root / MODEL_FILE).read_bytes()
    if sha256(data) != bundle.manifest["files"][MODEL_FILE]:
        raise BundleError(MODEL_FILE, "changed on disk since the bundle was loaded")
    return data


def _read_results(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    done = pd.read_csv(path, dtype={"query": str, "query_label": str, "class_name": str, "path": str},
                       keep_default_na=False)
    if list(done.columns) != list(RESULT_COLUMNS):
        raise ValueError(f"{path} exists but is not a results table of `deepmetric search` (columns "
                         f"{list(done.columns)}); give another --out or remove it")
    return done


def search_items(
    bundle: Bundle,
    items: pd.DataFrame,
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    k: int,
    batch_size: int = 32,
    processes: int = 1,
    threads: int = 0,
    limits: ImageLimits = ImageLimits(),
    progress: bool | None = None,
) -> pd.DataFrame:
    """Search the ``k`` nearest gallery items of every image of ``items`` not in ``out`` yet; write ``out`` (CSV,
    atomically) with the earlier rows first; return the whole table."""
    from deepmetric.index.bulk import embed_items, embedding_matrix

    if not 1 <= k <= bundle.gallery_size:
        raise ValueError(f"-k must be in [1, {bundle.gallery_size}] (the gallery size), got {k}")
    out = Path(out)
    done = _read_results(out)
    todo = items[~items["path"].isin(set(done["query"]))].reset_index(drop=True)
    if todo.empty:
        return done
    partial = out.with_name(out.name + ".partial")
    table = embed_items(model_bytes(bundle), todo, root, partial / "queries.parquet", batch_size=batch_size,
                        processes=processes, threads=threads, limits=limits, progress=progress)
    table = table.set_index("path").loc[todo["path"]].reset_index()
    emb = embedding_matrix(table)
    rows: list[dict[str, Any]] = []
    labels = todo["label"] if "label" in todo else pd.Series([None] * len(todo))
    for start in range(0, len(todo), _SEARCH_CHUNK):
        hits = bundle.search(emb[start:start + _SEARCH_CHUNK], k)
        for query, qlabel, neighbours in zip(todo["path"][start:], labels[start:], hits):
            known = qlabel is not None and not pd.isna(qlabel)
            for rank, n in enumerate(neighbours, 1):
                same = (str(qlabel) in (n["class_name"], str(n["label"]))) if known else None
                rows.append({"query": query, "query_label": str(qlabel) if known else "", "rank": rank, **n,
                             "same_class": same})
    new = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    result = pd.concat([done, new], ignore_index=True) if len(done) else new
    with atomic_path(out) as tmp:
        result.to_csv(tmp, index=False)
    shutil.rmtree(partial, ignore_errors=True)
    return result


def _data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def results_page(bundle: Bundle, results: pd.DataFrame, items: pd.DataFrame, root: str | os.PathLike[str], *,
                 limits: ImageLimits = ImageLimits(), max_queries: int = 500, size: int = 96) -> str:
    """A self-contained HTML page: for each of the first ``max_queries`` queries of ``results``, its image (cut
    to its box) and its neighbours' bundle thumbnails with class, score and a green/red frame when the query's
    class is known."""
    from deepmetric.bundle.thumbnails import encode_thumbnail
    from deepmetric.data.images import ImageDecodeError, open_image, safe_join
    from deepmetric.data.transforms import crop_to_box

    boxes = boxes_of(items)
    box_of = dict(zip(items["path"], boxes)) if boxes is not None else {}
    queries = list(dict.fromkeys(results["query"]))
    shown = queries[:max_queries]
    thumbs = bundle.thumbnails
    css = ("body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse}"
           "td{padding:4px;vertical-align:top;text-align:center;font-size:12px}figure{margin:0}"
           "img{display:block;margin:auto;border:3px solid transparent}.hit img{border-color:#2a2}"
           ".miss img{border-color:#c22}th{text-align:left;font-weight:600;padding:4px}")
    lines = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>deepmetric search: {len(queries)} queries</title><style>{css}</style></head><body>",
             f"<h1>Nearest gallery items of {len(queries)} queries</h1>",
             f"<p>Bundle model {html.escape(str(bundle.manifest.get('model_version')))}, index "
             f"{html.escape(str(bundle.manifest.get('index_version')))}, gallery of {bundle.gallery_size}."
             + (f" The first {len(shown)} queries are shown; results.csv has all." if len(shown) < len(queries)
                else "") + "</p><table>"]
    by_query = results.groupby("query", sort=False)
    for q in shown:
        group = by_query.get_group(q)
        try:
            img = crop_to_box(open_image(safe_join(root, q), limits=limits), box_of.get(q), q)
            qsrc = _data_uri(encode_thumbnail(img, size, "jpeg", 85), "image/jpeg")
            qcell = f"<img src='{qsrc}' alt='query {html.escape(q)}'>"
        except (ImageDecodeError, OSError, ValueError):
            qcell = "(unreadable)"
        label = str(group["query_label"].iloc[0])
        cells = [f"<th><figure>{qcell}<figcaption>{html.escape(q)}"
                 + (f"<br>class {html.escape(label)}" if label else "") + "</figcaption></figure></th>"]
        for r in group.itertuples():
            # by gallery row, not id: they differ once items were removed
            row = bundle.row_of(int(r.id)) if thumbs is not None else None
            data = thumbs.get(row) if row is not None else None
            pic = (f"<img src='{_data_uri(data, thumbs.media_type)}' alt='{html.escape(str(r.class_name))}'>"
                   if data else "")
            same = r.same_class
            cls = "" if same is None or same == "" or (isinstance(same, float) and np.isnan(same)) else \
                (" class='hit'" if str(same) == "True" else " class='miss'")
            cells.append(f"<td{cls}><figure>{pic}<figcaption>{html.escape(str(r.class_name))}<br>"
                         f"{float(r.score):.3f}</figcaption></figure></td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table></body></html>")
    return "\n".join(lines)
