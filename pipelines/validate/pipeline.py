from kedro.pipeline import Pipeline, node

from pipelines.validate.nodes import gate, run_validation


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(run_validation, ["manifest", "params:data", "params:validate"],
                 ["validation_report", "validation_docs"], name="run_validation"),
            node(gate, ["manifest", "validation_report"], "validated_manifest", name="gate_on_validation"),
        ]
    )
