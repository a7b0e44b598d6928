"""Fuzzing the config loader (hypothesis): YAML trees, raw YAML text and `--set` strings.

No input ends in a traceback: `load_config` returns a JobConfig or raises one ConfigError
whose message is a single line naming the file or the override. YAML never constructs
Python objects. Bugs these found (fixed in pangu_ms/config/loader.py): a `base_config:` that
is a number, a null or a list holding one crashed with TypeError; a key holding a newline,
a PyYAML syntax error and a `--set` string with a newline gave multi-line errors.
"""
from __future__ import annotations

import dataclasses
import tempfile
import typing
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pangu_ms.config import JobConfig, load_config
from pangu_ms.errors import ConfigError

SECTIONS = [f.name for f in dataclasses.fields(JobConfig)]
# an optional section (`experts: ExpertsConfig | None`) contributes its class's fields
_HINTS = {k: next(t for t in (typing.get_args(v) or (v,)) if t is not type(None))
          for k, v in typing.get_type_hints(JobConfig).items()}
FIELDS = sorted({g.name for f in dataclasses.fields(JobConfig) for g in dataclasses.fields(_HINTS[f.name])})
FUZZ = settings(max_examples=400, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), st.text(max_size=12))
keys = st.one_of(st.sampled_from(SECTIONS + FIELDS + ["base_config"]), st.text(max_size=8), st.integers(-2, 2))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=10)
trees = st.dictionaries(keys, values, max_size=4)
# raw YAML: syntax characters, tags (Python-object ones included), anchors, merge keys
yaml_text = st.lists(st.sampled_from(list(":-[]{}!&*#|>'\",. \n\t0a1") + [
    "model", "train", "steps", "base_config", "!!python/object/apply:os.system", "!!python/name:os.system",
    "!!binary", "&a", "*a", "<<", "\x00", "\ufeff", "\x1d", "中"]), max_size=30).map("".join)


def _one_line_or_config(load) -> JobConfig | None:
    try:
        return load()
    except ConfigError as exc:
        assert "\n" not in str(exc), f"multi-line error: {exc}"
        return None


def _file(text: str, base: Path) -> Path:
    path = Path(tempfile.mkdtemp(dir=base)) / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("config_fuzz")


@FUZZ
@given(tree=trees)
def test_any_yaml_tree_loads_or_is_one_clear_error(base, tree):
    path = _file(yaml.safe_dump(tree, allow_unicode=True), base)
    cfg = _one_line_or_config(lambda: load_config(path))
    assert cfg is None or isinstance(cfg, JobConfig)


@FUZZ
@given(text=st.one_of(yaml_text, st.text(max_size=40)))
def test_any_yaml_text_loads_or_is_one_clear_error(base, text):
    path = _file(text, base)
    cfg = _one_line_or_config(lambda: load_config(path))
    assert cfg is None or isinstance(cfg, JobConfig)


@FUZZ
@given(overrides=st.lists(st.one_of(
    st.text(max_size=30),
    st.builds("{}={}".format, st.sampled_from(["train.steps", "model", "optimizer.lr", "data.sources", "run",
                                               "a.b.c", "parallel.dp.x", "model.compute_dtype", ".", "run.name",
                                               "finetune.length_buckets", "run.seed"]), yaml_text)), max_size=3))
def test_any_set_strings_load_or_are_one_clear_error(overrides):
    cfg = _one_line_or_config(lambda: load_config(None, overrides))
    assert cfg is None or isinstance(cfg, JobConfig)


def test_python_object_tags_are_refused_never_constructed(tmp_path):
    marker = tmp_path / "constructed"
    for tag in (f"!!python/object/apply:os.system ['touch {marker}']", "!!python/name:os.system",
                f"!!python/object/new:pathlib.Path ['{marker}']"):
        path = _file(f"run:\n  name: {tag}\n", tmp_path)
        with pytest.raises(ConfigError, match=r"not plain YAML at line 2.*safe_load: tags that would construct Python "
                                              r"objects are refused"):
            load_config(path)
    # as an override value the tag is only text (a string field keeps it verbatim)
    assert load_config(None, [f"run.name=!!python/object/apply:os.system ['touch {marker}']"]).run.name.startswith("!!")
    assert not marker.exists()


@pytest.mark.parametrize("text,msg", [
    ("base_config: 5\n", r"base_config=5: give a file path or a list of paths"),
    ("base_config: [null]\n", r"base_config=\[None\]: give a file path"),
    ("model: {a: [1\n", r"not valid YAML at line 2, column 1: expected ',' or '\]'"),
    ("? \"a\\nb\"\n: 1\n", r"unknown key 'a\\nb'"),
])
def test_bugs_the_fuzzing_found_are_one_line_errors(tmp_path, text, msg):
    with pytest.raises(ConfigError, match=msg) as err:
        load_config(_file(text, tmp_path))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.compute_dtype=float\n16"])
    assert "\n" not in str(err.value) and r"'model.compute_dtype=float\n16'" in str(err.value)
