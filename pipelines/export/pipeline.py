from kedro.pipeline import Node, Pipeline

from pipelines.export.nodes import export_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_model,
                inputs=["trained_model", "validated_manifest", "params:data", "params:model", "params:export"],
                outputs=["onnx_model", "export_report"],
                name="export",
            )
        ]
    )
