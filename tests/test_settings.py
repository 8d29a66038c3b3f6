"""The Kedro project settings (deepmetric.settings), as `kedro run` loads them: the OmegaConfigLoader over
conf/base + conf/local, and the parameter check hook refusing a bad parameter by name before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Kedro's project bootstrap is process-global (settings, pipelines): run it in a child, from a scratch folder so
# that the project's logging configuration (a file under logs/) is not picked up.
SESSION = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    root = Path(sys.argv[1])
    bootstrap_project(root)
    from kedro.framework.project import pipelines, settings

    out = {"loader": settings.CONFIG_LOADER_CLASS.__name__, "args": settings.CONFIG_LOADER_ARGS,
           "hooks": [type(h).__name__ for h in settings.HOOKS], "pipelines": sorted(pipelines)}
    runtime = json.loads(sys.argv[2])
    try:
        with KedroSession.create(project_path=root, runtime_params=runtime) as session:
            context = session.load_context()
            out["params"] = sorted(context.params)
            out["epochs"] = context.params["train"]["epochs"]
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
""")


def _session(tmp_path, runtime: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", SESSION, str(ROOT), json.dumps(runtime)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kedro_loads_the_project_config_and_its_parameter_check(tmp_path):
    out = _session(tmp_path, {"train": {"epochs": 3}})
    assert out["loader"] == "OmegaConfigLoader"
    assert out["args"] == {"base_env": "base", "default_run_env": "local"}
    assert out["hooks"] == ["ParamsCheckHook"]
    assert {"__default__", "train", "bundle"} <= set(out["pipelines"])
    assert "error" not in out, out
    assert {"data", "train", "export", "bundle"} <= set(out["params"]) and out["epochs"] == 3


def test_a_bad_parameter_stops_the_session_naming_it(tmp_path):
    out = _session(tmp_path, {"train": {"epochs": 0}})
    assert out["error"].startswith("ParamsError: ") and "train.epochs = 0" in out["error"], out
