"""The `gpu` extra (Unsloth, unsloth_zoo, bitsandbytes) accepts every version the project pins.

requirements/gpu-metadata.json records the Requires-Dist lines of those packages' wheels (pip download --no-deps,
then METADATA), with the date. The CPU machines that run CI install the same transformers, TRL and datasets a GPU
install gets, so these checks are what stands between a green CI and a `pip install -e ".[gpu]"` that cannot
resolve. No network and no GPU needed.
"""

import json
import re
import sys
from importlib import metadata as installed

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from empathy_workbook.paths import REPO_ROOT

# The machine a GPU user installs on: Linux, x86-64, this Python (markers for macOS or Windows do not apply).
TARGET = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def recorded() -> dict:
    """{canonical name: {"version", "requires_dist"}} from requirements/gpu-metadata.json."""
    packages = json.loads((REPO_ROOT / "requirements" / "gpu-metadata.json").read_text())["packages"]
    return {canonicalize_name(name): entry for name, entry in packages.items()}


def gpu_install(proj: dict) -> list[Requirement]:
    """What `pip install -e ".[gpu]"` asks for: the dependencies plus the gpu extra."""
    return [Requirement(line) for line in proj["dependencies"] + proj["optional-dependencies"]["gpu"]]


def exact_pins(requirements: list[Requirement]) -> dict[str, Version]:
    """{name: version} of every `name==version` requirement."""
    pins = {}
    for req in requirements:
        exact = [s for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = Version(exact[0].version)
    return pins


def applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate(TARGET)


def rejected_pins(package: str, pins: dict[str, Version], packages: dict) -> list[str]:
    """The recorded requirements of `package` that a pinned version does not satisfy (one line each)."""
    bad = []
    for line in packages[package]["requires_dist"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if applies(req) and name in pins and not req.specifier.contains(pins[name], prereleases=True):
            bad.append(f"{package} {packages[package]['version']} requires {line}; the project pins {name}=={pins[name]}")
    return bad


def test_metadata_snapshot_is_dated_and_names_versions():
    meta = json.loads((REPO_ROOT / "requirements" / "gpu-metadata.json").read_text())
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", meta["recorded"])
    for name, entry in meta["packages"].items():
        assert entry["version"] and entry["requires_dist"], name


def test_the_gpu_extra_is_unsloth_its_zoo_and_bitsandbytes_pinned_to_the_recorded_releases():
    packages = recorded()
    extra = [Requirement(line) for line in project()["optional-dependencies"]["gpu"]]
    assert {canonicalize_name(r.name) for r in extra} == {"unsloth", "unsloth-zoo", "bitsandbytes"}
    for req in extra:
        name = canonicalize_name(req.name)
        assert name in packages, f"{name} is in the gpu extra but its metadata is not in requirements/gpu-metadata.json"
        assert [s.operator for s in req.specifier] == ["=="], f"pin {name} exactly: its metadata was read for one version"
        assert req.specifier.contains(packages[name]["version"]), f"the recorded {name} is not the pinned one"


def test_every_gpu_package_accepts_every_pinned_version():
    packages, proj = recorded(), project()
    pins = exact_pins(gpu_install(proj))
    problems = [p for name in packages for p in rejected_pins(name, pins, packages)]
    assert not problems, "\n".join(problems)
    # not vacuous: the checks above did compare the pins Unsloth constrains most
    unsloth = {canonicalize_name(Requirement(line).name) for line in packages["unsloth"]["requires_dist"]}
    assert {"transformers", "trl", "datasets", "peft", "accelerate", "bitsandbytes", "unsloth-zoo"} <= unsloth & set(pins)


def test_installed_versions_of_ranged_requirements_satisfy_the_gpu_packages_too():
    # torch, tokenizers, protobuf, ... are ranges in pyproject.toml: the release this machine installed inside
    # the project's range must also be one Unsloth accepts (torch < 2.15 for Unsloth 2026.10.9).
    packages, problems, checked = recorded(), [], 0
    ranged = [r for r in gpu_install(project()) if not any(s.operator == "==" for s in r.specifier)]
    for req in ranged:
        name = canonicalize_name(req.name)
        try:
            version = Version(installed.version(req.name))
        except installed.PackageNotFoundError:
            continue
        for package in packages:
            for line in packages[package]["requires_dist"]:
                theirs = Requirement(line)
                if applies(theirs) and canonicalize_name(theirs.name) == name:
                    checked += 1
                    if not theirs.specifier.contains(version, prereleases=True):
                        problems.append(f"{package} requires {line}; installed {name} {version}")
    assert not problems, "\n".join(problems)
    assert checked >= 3  # torch, sentencepiece and protobuf at least


def test_the_check_fails_on_pins_unsloth_rejects():
    # The pins before Unsloth was taken in (transformers 5.23.0, TRL 1.16.0, datasets 5.2.0): every one is reported.
    packages = recorded()
    old = {"transformers": Version("5.23.0"), "trl": Version("1.16.0"), "datasets": Version("5.2.0"),
           "peft": Version("0.21.2")}
    problems = rejected_pins("unsloth", old, packages) + rejected_pins("unsloth-zoo", old, packages)
    pinned = [p.rsplit("the project pins ", 1)[1].split("==")[0] for p in problems]
    assert sorted(pinned) == ["datasets"] * 2 + ["transformers"] * 2 + ["trl"] * 2  # unsloth and unsloth_zoo each
    # peft 0.21.2 is accepted by both: only what is wrong is reported

