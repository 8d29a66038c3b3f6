"""The great-expectations suite over the manifest (plus columns computed from the files and the table).

GX has expectations for schema, nulls, allowed values, uniqueness, bounds and counts; what it has no
expectation for (a class in two splits, the same bytes in two splits or under two classes, images per class per
split, a box outside its image, a file that no longer decodes) is computed as a column
(`deepmetric.validation.computed`) and a real GX expectation is set on that column. Each expectation carries
``meta.check``: the name a user sees in the report and in the failure message, and a GX severity: ``critical``
checks gate the run, ``warning`` ones are reported (``report["warnings"]``) without failing it, ``info`` ones
describe the data in the data docs (class sizes, image sizes, formats; ``report["profile"]``).

GX is imported lazily (about 3 s) and runs in an ephemeral context with progress bars off.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.data.contract import DATASETS, MANIFEST_COLUMNS, ROLES, SPLITS
from deepmetric.data.images import ImageLimits
from deepmetric.runtime import source_date
from deepmetric.validation.computed import computed_columns
from deepmetric.validation.params import ValidateParams
from deepmetric.validation.profile import class_size_note, format_note, image_size_note, profile

__all__ = ["ValidationFailed", "failure_summary", "read_tree", "validate_manifest", "validate_with_docs",
           "warning_summary"]

_STR_COLUMNS = ("path", "class_name", "split", "role", "sha256", "dataset")
_INT_COLUMNS = ("label", "width", "height")
_SUMMARY_KEYS = {"path", "label", "class_name", "split", "role", "value"}
_INT_TYPES = ["int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "Int64", "Int32"]


class ValidationFailed(RuntimeError):
    """The data did not pass; the message names every failing check with example rows."""

    def __init__(self, report: Mapping[str, Any]) -> None:
        self.report = report
        super().__init__(failure_summary(report))


def _build_suite(gx, df: pd.DataFrame, dataset: str, params: ValidateParams, prof: Mapping[str, Any]) -> list:
    """The expectations, each with ``meta.check`` naming it for humans (and its severity: critical unless
    said)."""
    E = gx.expectations
    cols = set(df.columns)
    ex: list = []

    def add(check: str, exp, severity: str = "critical", notes: str | None = None) -> None:
        exp.meta = {"check": check}
        exp.severity = severity
        if notes:
            exp.notes = notes
        ex.append(exp)

    for c in MANIFEST_COLUMNS:
        add(f"schema: column '{c}' present", E.ExpectColumnToExist(column=c))
    for c in _STR_COLUMNS:
        if c in cols:
            add(f"type: '{c}' is text", E.ExpectColumnValuesToBeOfType(column=c, type_="str"))
    for c in _INT_COLUMNS:
        if c in cols:
            add(f"type: '{c}' is an integer", E.ExpectColumnValuesToBeInTypeList(column=c, type_list=_INT_TYPES))
    if "category" in cols:
        add("type: 'category' is text", E.ExpectColumnValuesToBeOfType(column="category", type_="str"))
    for c in (*MANIFEST_COLUMNS, "category"):
        if c in cols:
            add(f"no nulls in '{c}'", E.ExpectColumnValuesToNotBeNull(column=c))
    if "split" in cols:
        add("allowed values: split", E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
        add("train and test splits present",
            E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=["train", "test"]))
    if "role" in cols:
        add("allowed values: role", E.ExpectColumnValuesToBeInSet(column="role", value_set=list(ROLES)))
    if "dataset" in cols:
        add(f"allowed values: dataset is '{dataset}'",
            E.ExpectColumnValuesToBeInSet(column="dataset", value_set=[dataset]))
    if {"split", "role"} <= cols:
        if dataset in DATASETS:
            separate = DATASETS[dataset].separate_gallery
        else:  # a catalogue: all test rows `both`, or a separate gallery (a `both` query would find itself)
            separate = bool(df.loc[df["split"] == "test", "role"].isin(["query", "gallery"]).any())
        test_roles = ["query", "gallery"] if separate else ["both"]
        add("roles: train/val rows are 'both'",
            E.ExpectColumnValuesToBeInSet(column="role", value_set=["both"], row_condition='split != "test"',
                                          condition_parser="pandas"))
        add(f"roles: test rows are {'/'.join(test_roles)}",
            E.ExpectColumnValuesToBeInSet(column="role", value_set=test_roles, row_condition='split == "test"',
                                          condition_parser="pandas"))
    if "path" in cols:
        add("paths unique", E.ExpectColumnValuesToBeUnique(column="path"))
    if "sha256" in cols:
        add("sha256 is a hex digest", E.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$"))
    if "file_error" in cols:
        add("files present and decodable", E.ExpectColumnValuesToBeNull(column="file_error"))
    if "file_sha256" in cols:
        add("files unchanged since ingest (sha256)",
            E.ExpectColumnPairValuesToBeEqual(column_A="sha256", column_B="file_sha256"))
    if "width" in cols:
        add(f"image width in [{params.min_width}, {params.max_width}]",
            E.ExpectColumnValuesToBeBetween(column="width", min_value=params.min_width, max_value=params.max_width))
    if "height" in cols:
        add(f"image height in [{params.min_height}, {params.max_height}]",
            E.ExpectColumnValuesToBeBetween(column="height", min_value=params.min_height,
                                            max_value=params.max_height))
    if "class_images_in_split" in cols:
        add(f">= {params.min_images_per_class} images per class in every split",
            E.ExpectColumnValuesToBeBetween(column="class_images_in_split", min_value=params.min_images_per_class))
    if "label_split_count" in cols:
        add("train/val/test class sets disjoint",
            E.ExpectColumnValuesToBeBetween(column="label_split_count", min_value=1, max_value=1))
    if "label_name_count" in cols:
        add("one class_name per label",
            E.ExpectColumnValuesToBeBetween(column="label_name_count", min_value=1, max_value=1))
    if "sha256_split_count" in cols:
        add("no identical file bytes across splits (leakage)",
            E.ExpectColumnValuesToBeBetween(column="sha256_split_count", min_value=1, max_value=1))
    if "sha256_other_classes" in cols:
        add("one class per image: identical bytes under two classes (labelling error)",
            E.ExpectColumnValuesToBeNull(column="sha256_other_classes"))
    if "sha256_in_class_count" in cols:
        add("one copy per image: identical bytes twice in a class (duplicates inflate Recall@1)",
            E.ExpectColumnValuesToBeBetween(column="sha256_in_class_count", min_value=1, max_value=1),
            severity="warning")
    if "query_gallery_images" in cols:
        add("every query class has gallery images",
            E.ExpectColumnValuesToBeBetween(column="query_gallery_images", min_value=1, row_condition='role == "query"',
                                            condition_parser="pandas"))
    if "bbox_error" in cols:
        add("bounding boxes inside their images", E.ExpectColumnValuesToBeNull(column="bbox_error"))
    if prof.get("images_per_class"):
        add("profile: images per class",
            E.ExpectColumnMedianToBeBetween(column="class_size", min_value=0, row_condition="class_first_row == 1",
                                            condition_parser="pandas"),
            severity="info", notes=class_size_note(prof))
    if prof.get("width") and prof.get("height"):
        add("profile: image sizes", E.ExpectColumnMedianToBeBetween(column="width", min_value=0), severity="info",
            notes=image_size_note(prof))
    if prof.get("formats"):
        add("profile: image formats",
            E.ExpectColumnMostCommonValueToBeInSet(column="file_format", value_set=sorted(prof["formats"]),
                                                   ties_okay=True),
            severity="info", notes=format_note(prof))
    info = DATASETS.get(dataset)
    if params.known_counts and info is not None and info.num_images is not None:
        add(f"known image count of {dataset}: {info.num_images}", E.ExpectTableRowCountToEqual(value=info.num_images))
        if "label" in cols and info.num_classes is not None:
            add(f"known class count of {dataset}: {info.num_classes}",
                E.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=info.num_classes,
                                                          max_value=info.num_classes))
        if {"label", "split"} <= cols and info.num_train_classes is not None:
            add(f"known train+val class count of {dataset}: {info.num_train_classes}",
                E.ExpectColumnUniqueValueCountToBeBetween(
                    column="label", min_value=info.num_train_classes, max_value=info.num_train_classes,
                    row_condition='split != "test"', condition_parser="pandas"))
        if {"label", "split"} <= cols and info.num_test_classes is not None:
            add(f"known test class count of {dataset}: {info.num_test_classes}",
                E.ExpectColumnUniqueValueCountToBeBetween(
                    column="label", min_value=info.num_test_classes, max_value=info.num_test_classes,
                    row_condition='split == "test"', condition_parser="pandas"))
    return ex


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def _examples(df: pd.DataFrame, result: dict, kwargs: dict, n: int) -> list[dict]:
    """Example rows for a failing map expectation: the manifest row(s) named in GX's unexpected index list."""
    idx = result.get("partial_unexpected_index_list") or []
    cols = [c for c in ("path", "label", "class_name", "split", "role", "sha256", "width", "height") if c in df]
    extra = [kwargs[k] for k in ("column", "column_A", "column_B") if kwargs.get(k) in df and kwargs[k] not in cols]
    rows: list[dict] = []
    by_path = df.set_index("path", drop=False) if "path" in df and df["path"].is_unique else None
    for item in idx[:n]:
        if isinstance(item, dict) and "path" in item and by_path is not None and item["path"] in by_path.index:
            row = by_path.loc[item["path"], cols + extra]
        elif isinstance(item, (int, np.integer)) and 0 <= int(item) < len(df):
            row = df.iloc[int(item)][cols + extra]
        else:
            rows.append(_jsonable(item))
            continue
        rows.append({k: _jsonable(row[k].item() if hasattr(row[k], "item") else row[k]) for k in cols + extra})
    if not rows and result.get("partial_unexpected_list"):
        rows = [{"value": _jsonable(v)} for v in result["partial_unexpected_list"][:n]]
    return rows


def validate_manifest(
    manifest: pd.DataFrame,
    root: str | os.PathLike[str] | None,
    dataset: str,
    params: ValidateParams | Mapping[str, Any] | None = None,
    docs_dir: str | os.PathLike[str] | None = None,
    limits: ImageLimits = ImageLimits(),
    progress: bool | None = None,
    run_time: dt.datetime | None = None,
) -> dict[str, Any]:
    """Run the suite; returns the JSON-able report (``success``, per-check results with unexpected counts and
    example rows). When ``docs_dir`` is given, GX's HTML data docs are built there. ``limits``: the per-image
    bounds the file check decodes under. ``run_time``: the validation run's time (default: the source date,
    :func:`deepmetric.runtime.source_date`, not the clock). Never raises for bad data (see
    :class:`ValidationFailed` / :func:`failure_summary` for the gate)."""
    if not isinstance(params, ValidateParams):
        params = ValidateParams.model_validate(dict(params or {}))
    t0 = time.perf_counter()
    df = computed_columns(manifest, None if root is None else str(root), params, limits, progress)
    t_files = time.perf_counter() - t0
    prof = profile(df)

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_def = (ctx.data_sources.add_pandas("deepmetric").add_dataframe_asset("manifest")
                 .add_batch_definition_whole_dataframe("whole_manifest"))
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"deepmetric_manifest_{dataset}"))
    for exp in _build_suite(gx, df, dataset, params, prof):
        suite.add_expectation(exp)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="manifest", data=batch_def, suite=suite))
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": params.max_examples}
    if "path" in df:
        result_format["unexpected_index_column_names"] = ["path"]
    gx_df = df.reset_index(drop=True)
    # The run's time is the source date, not the clock: the data docs (a DVC output) are a function of the inputs.
    from great_expectations.core.run_identifier import RunIdentifier

    run_id = RunIdentifier(run_name="deepmetric", run_time=run_time or source_date())
    res = vd.run(batch_parameters={"dataframe": gx_df}, result_format=result_format, run_id=run_id)

    checks = []
    for r in res.results:
        d = r.to_json_dict()
        cfg = d["expectation_config"]
        kwargs = {k: v for k, v in cfg["kwargs"].items() if k != "batch_id"}
        result = d.get("result") or {}
        exc = d.get("exception_info") or {}
        entry: dict[str, Any] = {
            "check": (cfg.get("meta") or {}).get("check", cfg["type"]),
            "expectation": cfg["type"],
            "kwargs": _jsonable(kwargs),
            "success": bool(d["success"]),
            "severity": str(cfg.get("severity") or "critical"),
        }
        for k in ("element_count", "unexpected_count", "unexpected_percent", "observed_value"):
            if k in result:
                entry[k] = _jsonable(result[k])
        if exc.get("raised_exception"):
            entry["error"] = str(exc.get("exception_message"))
        if not entry["success"]:
            entry["examples"] = _examples(gx_df, result, kwargs, params.max_examples)
        checks.append(entry)
    # GX orders results its own way; keep the suite's order (the order checks are documented in).
    order = {c.meta["check"]: i for i, c in enumerate(suite.expectations)}
    checks.sort(key=lambda c: order.get(c["check"], len(order)))

    docs_index = None
    if docs_dir is not None:
        ctx.add_data_docs_site("deepmetric", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        ctx.build_data_docs(site_names=["deepmetric"])
        docs_index = "index.html"

    failed = [c["check"] for c in checks if not c["success"] and c["severity"] == "critical"]
    warned = [c["check"] for c in checks if not c["success"] and c["severity"] != "critical"]
    return {
        "success": not failed,
        "dataset": dataset,
        "root": None if root is None else str(root),
        "images": int(len(manifest)),
        "classes": int(manifest["label"].nunique()) if "label" in manifest else None,
        "checks_evaluated": len(checks),
        "checks_failed": len(failed),
        "failed": failed,
        "warnings": warned,
        "checks": checks,
        "profile": _jsonable(prof),
        "params": params.model_dump(),
        "great_expectations": gx.__version__,
        "data_docs": docs_index,
        "seconds": {"files": round(t_files, 3), "total": round(time.perf_counter() - t0, 3)},
    }


def _failing(report: Mapping[str, Any], critical: bool) -> list[Mapping[str, Any]]:
    return [c for c in report.get("checks", [])
            if not c.get("success") and (c.get("severity", "critical") == "critical") == critical]


def failure_summary(report: Mapping[str, Any]) -> str:
    """Human summary: each failing check, its unexpected count and example rows."""
    failing = _failing(report, critical=True)
    head = (f"data validation failed for dataset '{report.get('dataset')}' ({report.get('images')} images): "
            f"{len(failing)} of {report.get('checks_evaluated')} checks failed")
    return "\n".join([head, *_check_lines(failing, "FAILED"),
                      "full report: data/08_reporting/validation.json; HTML: "
                      "data/08_reporting/validation_docs/index.html"])


def warning_summary(report: Mapping[str, Any]) -> str | None:
    """The checks that warn without failing the run (e.g. duplicate images within a class), or None."""
    warned = _failing(report, critical=False)
    if not warned:
        return None
    head = f"data validation of '{report.get('dataset')}' passed with {len(warned)} warning(s)"
    return "\n".join([head, *_check_lines(warned, "WARNING")])


def _check_lines(failing: list[Mapping[str, Any]], word: str) -> list[str]:
    lines = []
    for c in failing:
        detail = []
        if "unexpected_count" in c:
            detail.append(f"{c['unexpected_count']} unexpected row(s)")
        if "observed_value" in c:
            detail.append(f"observed {c['observed_value']}")
        if "error" in c:
            detail.append(f"error: {c['error']}")
        lines.append(f"  {word} {c['check']}" + (f" ({'; '.join(detail)})" if detail else ""))
        focus = {c["kwargs"].get(k) for k in ("column", "column_A", "column_B")} - {None}
        for ex in c.get("examples", [])[:5]:
            if isinstance(ex, dict):
                ex = {k: v for k, v in ex.items() if k in _SUMMARY_KEYS or k in focus}
            lines.append(f"      e.g. {json.dumps(ex, ensure_ascii=False, default=str)}")
    return lines


def read_tree(folder: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file under ``folder`` as ``{relative posix path: bytes}`` (for the atomic FileTreeDataset)."""
    base = Path(folder)
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


# What makes GX's pages differ from run to run although the inputs do not: the time of rendering appended to asset
# URLs ("?d=…", great_expectations.render.view), the validation's wall-clock time, and a random uuid per collapsible
# block.
_RENDER_TIME = re.compile(rb"\?d=\d{8}T\d{6}\.\d{6}Z")
_GX_TIME = re.compile(rb"\d{8}T\d{6}\.\d{6}Z")
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _reproducible_page(html: bytes, run_time: dt.datetime) -> bytes:
    """A data-docs page with its times set to the run's (the source date) and its uuids numbered in order of
    appearance (each id still matches its links)."""
    html = _GX_TIME.sub(run_time.strftime("%Y%m%dT%H%M%S.%fZ").encode(), _RENDER_TIME.sub(b"", html))
    numbers: dict[bytes, bytes] = {}
    return _UUID.sub(lambda m: numbers.setdefault(m[0], b"00000000-0000-4000-8000-%012d" % len(numbers)), html)


def validate_with_docs(manifest: pd.DataFrame, root, dataset: str, params=None,
                       limits: ImageLimits = ImageLimits(),
                       progress: bool | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """:func:`validate_manifest` plus GX's data docs site, returned as files (written atomically by the caller).
    The pages carry the source date and no random ids (:func:`_reproducible_page`): the same inputs give the same
    files."""
    run_time = source_date()
    with tempfile.TemporaryDirectory(prefix="deepmetric-gxdocs-") as tmp:
        report = validate_manifest(manifest, root, dataset, params, docs_dir=tmp, limits=limits,
                                   progress=progress, run_time=run_time)
        files = read_tree(tmp)
    return report, {name: _reproducible_page(data, run_time) if name.endswith(".html") else data
                    for name, data in files.items()}

