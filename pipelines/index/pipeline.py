from kedro.pipeline import Node, Pipeline

from pipelines.index.nodes import build_index


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                build_index,
                inputs=["onnx_model", "validated_manifest", "params:data", "params:model", "params:index"],
                outputs=["faiss_index", "index_ids", "index_report"],
                name="index",
            )
        ]
    )
