from kedro.pipeline import Node, Pipeline

from pipelines.bundle.nodes import make_bundle


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                make_bundle,
                inputs=["onnx_model", "faiss_index", "index_ids", "metrics", "index_report", "thresholds",
                        "params:data",
                        "params:bundle"],
                outputs="deploy_bundle",
                name="bundle",
            )
        ]
    )
