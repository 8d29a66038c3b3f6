import glob

import pytest
import yaml

from deepmetric.data.config import ParamsError
from deepmetric.params import validate_params


def _params():
    out = {}
    for f in sorted(glob.glob("conf/base/parameters_*.yml")):
        out.update(yaml.safe_load(open(f)) or {})
    return out


def test_shipped_parameters_are_valid():
    validate_params(_params())


def test_every_problem_is_listed_at_once():
    p = _params()
    p["trian"] = {}
    p["train"]["epochs"] = 0
    p["evaluate"]["batch_size"] = "big"
    with pytest.raises(ParamsError) as err:
        validate_params(p)
    msg = str(err.value)
    assert "unknown parameter block(s) ['trian']" in msg
    assert "train.epochs = 0" in msg
    assert "evaluate.batch_size" in msg
