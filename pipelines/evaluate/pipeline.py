from kedro.pipeline import Node, Pipeline

from pipelines.evaluate.nodes import evaluate


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate,
                inputs=["trained_model", "validated_manifest", "params:data", "params:evaluate"],
                outputs=["metrics", "baseline_metrics", "retrieval_grid", "thresholds", "failure_report",
                         "per_class_table", "worst_queries_grid"],
                name="evaluate",
            )
        ]
    )
