"""The `gpu` extra installs only packages whose own requirements accept the project's pins.

requirements/gpu-metadata.json records the Requires-Dist lines of the candidate packages' wheels
(pip download --no-deps, then METADATA), with the date. This test needs no network and no GPU.
"""

import json
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def metadata():
    return json.loads((ROOT / "requirements" / "gpu-metadata.json").read_text())


def exact_pins() -> dict[str, Version]:
    """{name: version} of every `name==version` requirement the project installs everywhere."""
    pins = {}
    for line in project()["dependencies"]:
        req = Requirement(line)
        exact = [s for s in req.specifier if s.operator == "=="]
        if exact:
            pins[req.name.lower()] = Version(exact[0].version)
    return pins


def conflicts(package: str) -> list[str]:
    """The recorded requirements of `package` that reject one of the project's exact pins."""
    pins, bad = exact_pins(), []
    for line in metadata()["packages"][package]["requires_dist"]:
        req = Requirement(line)
        name = req.name.lower()
        if req.marker is not None and not req.marker.evaluate({"sys_platform": "linux", "platform_machine": "x86_64"}):
            continue
        if name in pins and not req.specifier.contains(pins[name], prereleases=True):
            bad.append(f"{package} requires {line}, the project pins {name}=={pins[name]}")
    return bad


def test_metadata_snapshot_is_dated_and_names_versions():
    meta = metadata()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", meta["recorded"])
    for name, entry in meta["packages"].items():
        assert entry["version"] and entry["requires_dist"], name


def test_every_gpu_extra_package_accepts_the_pins():
    recorded = metadata()["packages"]
    for line in project()["optional-dependencies"]["gpu"]:
        req = Requirement(line)
        name = req.name.lower()
        assert name in recorded, f"{name} is in the gpu extra but its metadata is not in requirements/gpu-metadata.json"
        assert req.specifier.contains(recorded[name]["version"]), f"the recorded {name} is not the pinned one"
        assert [s.operator for s in req.specifier] == ["=="], f"pin {name} exactly: its metadata was read for one version"
        assert not conflicts(name), conflicts(name)


def test_unsloth_stays_out_while_its_requirements_reject_the_pins():
    # The reason the gpu extra has no Unsloth: when a release accepts the pins, record it and add it back.
    problems = conflicts("unsloth") + conflicts("unsloth-zoo")
    gpu = {Requirement(line).name.lower() for line in project()["optional-dependencies"]["gpu"]}
    if problems:
        assert "unsloth" not in gpu and "unsloth-zoo" not in gpu, problems
    assert any("transformers" in p for p in problems) or "unsloth" in gpu
