"""Preset inheritance: `extends: <preset>` builds on another preset, child keys win (deep merge)."""

import dataclasses

import pytest

from empathy_workbook.config import ConfigError, RunConfig, load_config


def leaves(obj, prefix=""):
    """Every leaf field of a config as {dotted.name: value}, walking nested dataclasses."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(leaves(value, key + "."))
        else:
            out[key] = value
    return out


def overridden(values: dict, prefix="") -> set:
    """Dotted names of the leaves a raw preset dict sets."""
    keys = set()
    for key, value in values.items():
        if isinstance(value, dict):
            keys |= overridden(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def write(path, text):
    path.write_text(text)
    return path


def test_child_overrides_and_inherits_every_other_field(tmp_path):
    write(tmp_path / "parent.yaml", "sft:\n  train: {epochs: 5, learning_rate: 1.0e-3, batch_size: 3}\n"
                                    "data: {max_tokens: 300}\n")
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\nsft:\n  train: {batch_size: 7}\n")
    parent_cfg, child_cfg = load_config(str(tmp_path / "parent.yaml")), load_config(str(child))
    assert child_cfg.preset == "child" and parent_cfg.preset == "parent"
    assert child_cfg.sft.train.batch_size == 7
    # deep merge: the siblings of the overridden key come from the parent, not from the defaults
    assert child_cfg.sft.train.epochs == 5 and child_cfg.sft.train.learning_rate == 1e-3
    a, b = leaves(parent_cfg), leaves(child_cfg)
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"preset", "sft.train.batch_size"}


def test_chains_resolve_in_order(tmp_path):
    write(tmp_path / "a.yaml", "data: {max_tokens: 100, val_fraction: 0.2}\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\ndata: {max_tokens: 200}\n")
    c = write(tmp_path / "c.yaml", "extends: b.yaml\ndata: {seed: 7}\n")
    cfg = load_config(str(c))
    assert (cfg.data.max_tokens, cfg.data.val_fraction, cfg.data.seed) == (200, 0.2, 7)


def test_a_cycle_names_the_files(tmp_path):
    write(tmp_path / "x.yaml", "extends: y.yaml\n")
    write(tmp_path / "y.yaml", "extends: x.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle.*x\.yaml.*y\.yaml.*x\.yaml"):
        load_config(str(tmp_path / "x.yaml"))


def test_unknown_parent_and_unknown_child_key_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="no-such-parent"):
        load_config(str(write(tmp_path / "p.yaml", "extends: no-such-parent\n")))
    with pytest.raises(ConfigError, match="unknown key.*epoch"):
        load_config(str(write(tmp_path / "q.yaml", "extends: tiny\nsft:\n  train: {epoch: 1}\n")))


def test_rehearsal_preset_inherits_every_field_it_does_not_set():
    import yaml

    from empathy_workbook.config import preset_path

    raw = yaml.safe_load(preset_path("qwen3-0.6b-rehearsal").read_text())
    assert raw.pop("extends") == "qwen3-0.6b"
    set_here = overridden(raw)
    parent, child = leaves(load_config("qwen3-0.6b")), leaves(load_config("qwen3-0.6b-rehearsal"))
    assert set(parent) == set(child) == set(leaves(RunConfig()))
    for key in parent:
        if key == "preset" or key in set_here:
            continue
        assert child[key] == parent[key], key
    assert child["preset"] == "qwen3-0.6b-rehearsal"
