from kedro.pipeline import Node, Pipeline

from pipelines.train.nodes import train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_model,
                inputs=["validated_manifest", "params:data", "params:train", "params:model", "params:train_checkpoint_dir",
                        "params:train_live_dir", "params:train_cache_dir"],
                outputs=["trained_model", "train_timings"],
                name="train_model",
            )
        ]
    )
