"""One Kedro pipeline package per stage; each `pipeline.py` defines `create_pipeline()`."""
