"""The pieces every command group shares: usage errors exit 3, the limit flags become one ImageLimits, a refused
bundle ends the command with exit 2 and its reason."""

from __future__ import annotations

import pytest

from deepmetric.cli.common import (EXIT_BAD_BUNDLE, EXIT_BAD_INPUT, Parser, add_limit_flags, image_limits,
                                   load_bundle_or_exit, say)
from deepmetric.data.images import ImageLimits


def limits_of(*argv: str):
    p = Parser(prog="t")
    add_limit_flags(p)
    return image_limits(p.parse_args(list(argv)))


def test_usage_errors_exit_with_bad_input(capsys):
    p = Parser(prog="deepmetric-test")
    p.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "x"])
    assert e.value.code == EXIT_BAD_INPUT == 3
    err = capsys.readouterr().err
    assert err.startswith("usage: deepmetric-test") and "deepmetric-test: error: argument --n: invalid int value" in err


def test_limit_flags_become_one_image_limits(capsys):
    assert limits_of() == ImageLimits()
    assert limits_of("--max-pixels", "1000") == ImageLimits(max_pixels=1000)
    assert limits_of("--max-aspect-ratio", "3.5", "--max-pixels", "99") == ImageLimits(99, 3.5)
    assert capsys.readouterr().err == ""
    assert limits_of("--max-aspect-ratio", "0.5") is None
    assert capsys.readouterr().err == "deepmetric: invalid setting: max_aspect_ratio must be >= 1, got 0.5\n"
    assert limits_of("--max-pixels", "0") is None
    assert "deepmetric: invalid setting: max_pixels must be in [1, " in capsys.readouterr().err


def test_load_bundle_or_exit(deploy_bundle, tmp_path, capsys):
    folder, _, _ = deploy_bundle
    assert load_bundle_or_exit(str(folder)).gallery_size == 36
    with pytest.raises(SystemExit) as e:
        load_bundle_or_exit(str(tmp_path))
    assert e.value.code == EXIT_BAD_BUNDLE == 2
    assert capsys.readouterr().err == f"deepmetric: bundle refused: manifest.json: missing in {tmp_path}\n"


def test_say_writes_to_stderr(capsys):
    say("hello")
    assert capsys.readouterr() == ("", "deepmetric: hello\n")
