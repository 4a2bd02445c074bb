"""Tests of flowpost/config.py: validation errors name the key; overrides; YAML."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from flowpost.config import (
    ConfigError,
    apply_overrides,
    describe,
    from_dict,
    load_yaml,
    option,
    parse_override,
    to_dict,
)


@dataclass
class Inner:
    width: int = option(8, "width", min=1)
    kind: str = option("a", "kind", choices=["a", "b"])


@dataclass
class Outer:
    lr: float = option(1e-3, "learning rate", min=0.0)
    flag: bool = option(False, "a switch")
    sizes: list[int] = option(default_factory=lambda: [1, 2], help="sizes")
    maybe: float | None = option(None, "optional number")
    inner: Inner = option(default_factory=Inner, help="nested")


def test_defaults_and_nested_values() -> None:
    cfg = from_dict(Outer, {"lr": 1, "inner": {"width": 3}, "sizes": [4], "maybe": 2})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.inner.width == 3 and cfg.inner.kind == "a"
    assert cfg.sizes == [4] and cfg.maybe == 2.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lrr": 1}, "unknown key 'lrr'"),
        ({"inner": {"widht": 1}}, "unknown key 'inner.widht'"),
        ({"lr": "fast"}, "lr: expected a number"),
        ({"lr": -1.0}, "lr: -1.0 is below the minimum 0.0"),
        ({"inner": {"width": 0}}, "inner.width: 0 is below the minimum 1"),
        ({"inner": {"kind": "c"}}, "inner.kind: 'c' is not one of ['a', 'b']"),
        ({"flag": "yes"}, "flag: expected true or false"),
        ({"sizes": [1, "x"]}, "sizes[1]: expected an integer"),
        ({"inner": 3}, "inner: expected a mapping"),
    ],
)
def test_errors_are_one_line_and_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_overrides_parse_yaml_values_and_nest() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    out = apply_overrides({"inner": {"width": 2}}, ["inner.kind=b", "lr=0.5", "new.x=1"])
    assert out == {"inner": {"width": 2, "kind": "b"}, "lr": 0.5, "new": {"x": 1}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"lr": 1}, ["lr.x=2"])


def test_yaml_roundtrip_and_missing_file(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("lr: 0.01\ninner:\n  width: 5\n")
    cfg = from_dict(Outer, load_yaml(path))
    assert to_dict(cfg)["inner"] == {"width": 5, "kind": "a"}
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(tmp_path / "bad.yaml")


def test_describe_lists_every_leaf_with_help() -> None:
    rows = {key: help_text for key, help_text, _ in describe(Outer)}
    assert rows["inner.width"] == "width" and rows["lr"] == "learning rate"
    assert all(rows.values())


def test_scientific_notation_strings_are_numbers() -> None:
    assert from_dict(Outer, {"lr": "1e-4"}).lr == 1e-4
    with pytest.raises(ConfigError, match="lr: expected a number"):
        from_dict(Outer, {"lr": "fast"})


@pytest.mark.parametrize("raw", ["nan", ".nan", "inf", "-.inf", "1e999"])
def test_non_finite_numbers_are_refused_naming_the_key(raw: str) -> None:
    _, value = parse_override(f"lr={raw}")
    for data, key in (({"lr": value}, "lr"), ({"maybe": value}, "maybe")):
        with pytest.raises(ConfigError, match=rf"^{key}: expected a finite number, got"):
            from_dict(Outer, data)


def test_every_shipped_recipe_parses() -> None:
    import glob
    from pathlib import Path

    import yaml

    from flowpost.train.config import build_run_config

    root = Path(__file__).resolve().parents[1]
    recipes = sorted(glob.glob(str(root / "recipes" / "**" / "*.yaml"), recursive=True))
    assert len(recipes) > 20
    for path in recipes:
        build_run_config(yaml.safe_load(Path(path).read_text()))  # a bad key raises
