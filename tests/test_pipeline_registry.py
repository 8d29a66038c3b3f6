"""The stage pipelines Kedro runs (deepmetric.pipeline_registry): one per DVC stage, in chain order, and the
default chain without the built-in glyph render."""

from __future__ import annotations

from pathlib import Path

import yaml

from deepmetric.pipeline_registry import STAGES, register_pipelines

ROOT = Path(__file__).resolve().parents[1]


def _names(pipeline) -> set[str]:
    return {node.name for node in pipeline.nodes}


def test_each_dvc_stage_runs_the_pipeline_of_its_name_in_the_same_order():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES)
    assert [s["cmd"] for s in stages.values()] == [f"kedro run --pipelines {name}" for name in STAGES]


def test_every_stage_is_registered_and_reads_only_what_earlier_stages_write():
    pipelines = register_pipelines()
    assert list(pipelines) == [*STAGES, "__default__"]
    written: set[str] = set()
    for i, name in enumerate(STAGES):
        assert _names(pipelines[name]), f"pipeline {name} has no node"
        later = set().union(*(pipelines[s].all_outputs() for s in STAGES[i + 1:]))
        assert not pipelines[name].inputs() & later, f"{name} reads what a later stage writes"
        if i > 1:  # glyphs and ingest start from a dataset folder; every later stage goes on from earlier outputs
            assert pipelines[name].inputs() & written, f"{name} reads nothing an earlier stage wrote"
        written |= pipelines[name].all_outputs()


def test_the_default_chain_is_every_stage_but_the_glyph_render():
    pipelines = register_pipelines()
    default = _names(pipelines["__default__"])
    assert default == set().union(*(_names(pipelines[s]) for s in STAGES if s != "glyphs"))
    assert not _names(pipelines["glyphs"]) & default


def test_every_stage_depends_on_the_code_its_nodes_reach():
    """A code change reruns every stage whose nodes can run that code: each package module the stage's nodes
    import, directly or through other modules (lazy imports too), lies under one of the stage's DVC deps. Package
    ``__init__`` files are left out (they only re-export). Without this, editing e.g. the seed derivation in
    `deepmetric.runtime` left `dvc repro` calling the trained model current."""
    from tests.code_fixtures import module_files, module_graph, reachable

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    files, graph = module_files(), module_graph()
    gaps = {}
    for name, stage in stages.items():
        deps = [d.rstrip("/") for d in stage.get("deps", []) if isinstance(d, str)]
        used = reachable(sorted((ROOT / "pipelines" / name).glob("*.py")), graph)
        assert used, f"stage {name}: its nodes import nothing of the package"
        missing = sorted(
            m for m in used if files[m].name != "__init__.py"
            and not any((rel := str(files[m].relative_to(ROOT))) == d or rel.startswith(d + "/") for d in deps))
        if missing:
            gaps[name] = missing
    assert not gaps, f"dvc.yaml: stages whose deps miss code their nodes reach: {gaps}"
