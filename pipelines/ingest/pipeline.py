from kedro.pipeline import Pipeline, node

from pipelines.ingest.nodes import ingest


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([node(ingest, "params:data", ["manifest", "ingest_report"], name="ingest")])
