import dataclasses
import typing
import warnings
from pathlib import Path

import pytest

from fuserank.cli import main
from fuserank.config.load import RENAMED
from fuserank.config import (
    ConfigError,
    ExperimentConfig,
    RunConfig,
    cache_dir,
    check_values,
    declared_checks,
    flatten,
    from_dict,
    load_config,
    to_dict,
    with_overrides,
)

PIPELINE_CONFIGS = sorted((Path(__file__).parents[1] / "pipelines" / "configs").glob("*.yaml"))


def test_defaults_round_trip_through_a_dict():
    config = RunConfig()
    assert from_dict(RunConfig, to_dict(config)) == config


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"retrieval": {"n_candidate": 5}}, ["config.retrieval", "n_candidate"]),
        ({"nonsense": 1}, ["nonsense"]),
        ({"retrieval": {"ann_candidates": "many"}}, ["config.retrieval.ann_candidates", "expected int"]),
        ({"ranker": {"learning_rate": True}}, ["config.ranker.learning_rate"]),
        ({"eval": {"ks": 10}}, ["config.eval.ks", "expected a list"]),
        ({"fusion": {"weights": ["text"]}}, ["config.fusion.weights"]),
    ],
)
def test_bad_values_are_errors_that_name_the_key(values, words):
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, values)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("split.label_share=1.0", "split.label_share: 1.0 is outside [0, 1)"),
        ("ranker.num_leaves=1", "ranker.num_leaves: 1 is outside [2, inf)"),
        ("ranker.feature_fraction=0", "ranker.feature_fraction: 0.0 is outside (0, 1]"),
        ("eval.ks=[5, 0]", "eval.ks[1]: 0 is outside [1, inf)"),
        ("fusion.weights={text: 1, image: -0.5}", "fusion.weights.image: -0.5 is outside [0, inf)"),
        ("retrieval.pq_bits=17", "retrieval.pq_bits: 17 is outside [1, 16]"),
        ("ranker.base_scale=-0.5", "ranker.base_scale: -0.5 is outside [0, inf)"),
        ("ranker.n_jobs=0", "ranker.n_jobs: 0 is outside [1, inf)"),
        ("split.protocol=random", "split.protocol: 'random' is not one of leave_last_out, global_time"),
        ("split.test_quantile=1", "split.test_quantile: 1.0 is outside (0, 1)"),
        ("data.dataset=movielens-20m", "data.dataset: 'movielens-20m' is not one of movielens-100k, movielens-1m, catalog"),
        ("features.disabled_groups=[user, users]", "features.disabled_groups[1]: 'users' is not one of"),
    ],
)
def test_values_out_of_range_are_errors_that_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as err:
        with_overrides(RunConfig(), [override])
    assert str(err.value).startswith(message)


def test_range_edges_are_accepted_and_every_ranged_key_exists():
    config = with_overrides(RunConfig(), ["split.label_share=0", "ranker.feature_fraction=1", "export.holdout=0"])
    assert check_values(config) is config
    flat = flatten(RunConfig())
    assert all(any(k == key or k.startswith(key + ".") for k in flat) for key in declared_checks())


def _numeric(hint) -> bool:
    """Whether a field's type holds numbers: int or float, alone, optional, in a tuple or as mapping values."""
    if hint in (int, float):
        return True
    return any(_numeric(arg) for arg in typing.get_args(hint) if arg is not str)


def _fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[item.name]):
            yield from _fields(hints[item.name], f"{prefix}{item.name}.")
        else:
            yield f"{prefix}{item.name}", hints[item.name], item


def test_every_numeric_field_declares_its_range_with_the_field():
    numeric = {key: item for key, hint, item in _fields(RunConfig) if _numeric(hint)}
    assert {"ranker.base_scale", "ranker.n_jobs", "split.valid_time", "fusion.weights", "eval.ks"} <= set(numeric)
    missing = sorted(key for key, item in numeric.items() if "range" not in item.metadata)
    assert missing == [], f"numeric config fields without a declared range: {missing}"
    checks = declared_checks()
    assert all(checks[key] == {"range": item.metadata["range"]} for key, item in numeric.items())
    assert checks["split.protocol"] == {"choices": ("leave_last_out", "global_time")}


def test_a_section_added_with_an_out_of_range_default_is_caught_by_its_own_field():
    # A check declared on a field travels with it: no table elsewhere has to learn the new key.
    config = dataclasses.replace(RunConfig(), ranker=dataclasses.replace(RunConfig().ranker, n_jobs=-1))
    with pytest.raises(ConfigError, match=r"ranker.n_jobs: -1 is outside \[1, inf\)"):
        check_values(config)


def test_the_cli_stops_on_an_out_of_range_value_before_any_work(capsys):
    assert main(["train-evaluate", "--set", "ranker.num_leaves=1", "--quiet"]) == 2
    assert "ranker.num_leaves: 1 is outside [2, inf)" in capsys.readouterr().err


def test_ints_are_accepted_for_floats_and_lists_become_tuples():
    config = from_dict(RunConfig, {"ranker": {"learning_rate": 1}, "eval": {"ks": [1, 2]}})
    assert config.ranker.learning_rate == 1.0 and isinstance(config.ranker.learning_rate, float)
    assert config.eval.ks == (1, 2)


def test_overrides_parse_yaml_values_and_reject_unknown_keys():
    config = with_overrides(RunConfig(), ["retrieval.index=hnsw", "eval.ks=[5, 10]", "fusion.weights={text: 1.0}"])
    assert config.retrieval.index == "hnsw" and config.eval.ks == (5, 10) and config.fusion.weights == {"text": 1.0}
    with pytest.raises(ConfigError, match="retrival"):
        with_overrides(RunConfig(), ["retrival.index=hnsw"])
    with pytest.raises(ConfigError, match="index2"):
        with_overrides(RunConfig(), ["retrieval.index2=hnsw"])


def test_overrides_may_add_keys_to_mapping_fields_but_not_to_sections():
    # A mapping's keys are data (an LLM view's fusion weight, an export arm); a section's are fixed.
    config = with_overrides(RunConfig(), ["fusion.weights.llm_hidden=0.25", "export.arms.control=popular",
                                          "export.shares={treatment: 0.5, control: 0.5}"])
    assert config.fusion.weights["llm_hidden"] == 0.25 and config.fusion.weights["text"] == 0.5
    assert config.export.arms == {"treatment": "run", "control": "popular"}
    with pytest.raises(ConfigError, match="fusion.weights.llm_hidden: -1.0 is outside"):
        with_overrides(RunConfig(), ["fusion.weights.llm_hidden=-1"])
    with pytest.raises(ConfigError, match="unknown key 'llm_hidden'"):
        with_overrides(RunConfig(), ["ranker.llm_hidden=0.25"])
    with pytest.raises(ConfigError, match="'learning_rate' is not a config section"):
        with_overrides(RunConfig(), ["ranker.learning_rate.x=1"])


def test_flatten_gives_dotted_scalar_keys():
    flat = flatten(RunConfig())
    assert flat["ranker.learning_rate"] == 0.05
    assert flat["fusion.weights.text"] == 0.5
    assert flat["eval.ks"] == [5, 10, 20, 50]


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSERANK_CACHE", str(tmp_path / "env"))
    assert cache_dir(RunConfig().sources) == tmp_path / "env"
    config = with_overrides(RunConfig(), [f"sources.cache_dir={tmp_path / 'cfg'}"])
    assert cache_dir(config.sources) == tmp_path / "cfg"
    monkeypatch.delenv("FUSERANK_CACHE")
    assert cache_dir(RunConfig().sources) == Path("~/.cache/fuserank").expanduser()


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    if path.name == "movielens_100k.yaml":  # documented as "the defaults, written out"
        assert config == RunConfig()


def test_renamed_keys_load_under_their_new_names_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("retrieval:\n  n_candidates: 123\n  recent_items: 7\nfeatures:\n  recent_k: 3\n"
                    "llm:\n  history_items: 9\ntune:\n  n_candidates: [10, 20]\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(path)
    said = sorted(str(w.message).split(": ", 1)[1] for w in caught if w.category is FutureWarning)
    assert said == sorted(f"{s}.{old} is deprecated and will stop loading in the next release; use {s}.{new}"
                          for (s, old), new in RENAMED.items())
    assert config.retrieval.ann_candidates == 123 and config.retrieval.query_items == 7
    assert config.features.last_items == 3 and config.llm.prompt_items == 9 and config.tune.ann_candidates == (10, 20)
    with pytest.warns(FutureWarning, match="features.recent_k"):
        assert load_config(None, ["features.recent_k=4"]).features.last_items == 4


def test_a_renamed_key_set_under_both_names_is_an_error(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("retrieval:\n  n_candidates: 1\n  ann_candidates: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="both 'n_candidates' .deprecated. and 'ann_candidates'"):
        load_config(path)


def test_the_experiment_holds_what_defines_a_model_and_the_run_adds_job_settings():
    experiment = {f.name for f in dataclasses.fields(ExperimentConfig)}
    run = {f.name for f in dataclasses.fields(RunConfig)}
    assert run - experiment == {"output_dir", "run_name", "tracking", "tune", "export", "dask"}
    assert {"seed", "split", "retrieval", "features", "ranker", "sequence"} <= experiment
