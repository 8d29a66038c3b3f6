"""The generic registry (deepmetric.registry): registration, lookup with suggestions, metadata filters, prefixes,
discovery of a package's modules."""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest

from deepmetric.registry import Registry, UnknownNameError


def _colours() -> Registry:
    reg: Registry = Registry("colour", required=("kind",))
    reg.add("red", 1, kind="warm")
    reg.add("orange", 2, kind="warm")
    reg.add("blue", 3, kind="cold")
    return reg


def test_lookup_names_and_metadata():
    reg = _colours()

    @reg.register("green", kind="cold", hex="#0f0")
    def green():
        return 4

    assert reg["red"] == 1 and reg.lookup("green") is green
    assert reg.meta("green") == {"kind": "cold", "hex": "#0f0"}
    assert reg.entry("green").module == __name__
    assert reg.names() == ["blue", "green", "orange", "red"] == sorted(reg) and len(reg) == 4
    assert reg.names(kind="warm") == ["orange", "red"]
    assert reg.names(kind="cold", hex="#0f0") == ["green"]
    assert reg.names(kind="hot") == [] and reg.names(missing_key=None) == []
    assert "blue" in reg and "purple" not in reg and 7 not in reg
    assert reg.get("purple", "none") == "none"  # Mapping.get: the lookup error is a KeyError
    assert reg.check("red", what="paint.colour") == "red"


def test_registering_a_name_twice_is_refused_naming_both_modules():
    reg = _colours()
    twice = r"colour 'red' registered twice \(by tests\.test_registry and by tests\.test_registry\)"
    with pytest.raises(ValueError, match=twice):
        reg.add("red", 10, kind="warm")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("blue", kind="cold")(object())
    assert reg["red"] == 1 and reg["blue"] == 3  # the first registration stays


def test_required_metadata_and_empty_names_are_refused():
    reg = _colours()
    with pytest.raises(ValueError, match=r"colour 'teal' .*needs metadata \['kind'\]"):
        reg.add("teal", 5, hex="#088")
    with pytest.raises(ValueError, match="non-empty name"):
        reg.add("", 5, kind="cold")
    assert "teal" not in reg


def test_unknown_name_lists_the_choices_and_suggests_close_names():
    reg = _colours()
    with pytest.raises(UnknownNameError) as err:
        reg["oragne"]
    msg = str(err.value)
    assert msg == "unknown colour 'oragne'; did you mean 'orange'? (choose one of: blue, orange, red)"
    assert isinstance(err.value, ValueError) and isinstance(err.value, KeyError)
    with pytest.raises(UnknownNameError, match=r"^unknown paint\.colour 'xyz' \(choose one of: blue, orange, red\)$"):
        reg.check("xyz", what="paint.colour")
    with pytest.raises(UnknownNameError, match="no colour is registered"):
        Registry("colour")["red"]


def test_a_prefix_entry_claims_every_name_it_starts():
    reg: Registry = Registry("backbone")
    reg.add("resnet18", "torchvision")
    reg.add("timm/", "timm", prefix=True)
    reg.add("timm/hf-hub:", "hub", prefix=True)
    reg.add("timm/special", "exact")
    assert reg["timm/resnet50"] == "timm" and reg["timm/hf-hub:org/model"] == "hub"  # longest prefix wins
    assert reg["timm/special"] == "exact"  # an exact name wins over a prefix
    assert "timm/" not in reg  # the bare prefix names nothing
    assert reg.names() == ["resnet18", "timm/<name>", "timm/hf-hub:<name>", "timm/special"]
    assert sorted(reg) == ["resnet18", "timm/special"]  # the Mapping holds the exact names
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'tim/x'.*choose one of: resnet18, timm/<name>"):
        reg["tim/x"]


def _package(tmp_path, modules: dict[str, str]) -> str:
    """A real package on sys.path whose `__init__` defines a registry and discovers its modules."""
    name = f"plugpkg_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from deepmetric.registry import Registry\nTHINGS = Registry('thing')\n"
    )
    for mod, body in modules.items():
        (pkg / f"{mod}.py").write_text(textwrap.dedent(body))
    return name


@pytest.fixture
def syspath(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for m in set(sys.modules) - before:
        if m.startswith("plugpkg_"):
            del sys.modules[m]


def test_discovery_imports_every_public_module_once(syspath):
    name = _package(syspath, {
        "alpha": "from . import THINGS\nTHINGS.add('a', 1)\n",
        "beta": "from . import THINGS\n\n@THINGS.register('b', note='from beta')\nclass B:\n    pass\n",
        "_private": "from . import THINGS\nTHINGS.add('hidden', 0)\n",
    })
    things = __import__(name).THINGS
    assert things.names() == []
    assert things.discover(name) == [f"{name}.alpha", f"{name}.beta"]
    assert things.names() == ["a", "b"] and things.meta("b") == {"note": "from beta"}
    assert things.entry("b").module == f"{name}.beta"
    assert things.discover(name) == []  # once: a second call registers nothing twice


def test_discovery_does_not_swallow_a_broken_module(syspath):
    name = _package(syspath, {"good": "from . import THINGS\nTHINGS.add('g', 1)\n",
                              "broken": "import a_module_that_does_not_exist_here\n"})
    things = __import__(name).THINGS
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist_here"):
        things.discover(name)
