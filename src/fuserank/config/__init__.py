"""Configuration: one frozen dataclass per stage, checked as it is read.

- `experiment.py`: `ExperimentConfig`, what defines a model and its evaluation (data, split,
  encoders, stage 1, stage 2, seed), one section per stage.
- `jobs.py`: the job settings beside it (output folder, tracking, tune, export, dask) and
  `RunConfig`, the experiment plus those settings, which the command line hands to a job.
- `fields.py`: `ranged` and `one_of`, the check each field declares.
- `load.py`: YAML and overrides in, plain dicts out; unknown keys are errors, so a typo never
  turns into a silent default; old key names load for one release with a deprecation message.

Library functions receive the sections they use, not the whole config.
"""

from fuserank.config.experiment import (
    AudioConfig,
    BehaviourConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    FeatureConfig,
    FusionConfig,
    ImageConfig,
    LLMConfig,
    RankerConfig,
    RetrievalConfig,
    SequenceConfig,
    SlotsConfig,
    SourcesConfig,
    SplitConfig,
    TextConfig,
    VideoConfig,
    cache_dir,
)
from fuserank.config.fields import ConfigError, one_of, ranged
from fuserank.config.jobs import DaskConfig, ExportConfig, RunConfig, TrackingConfig, TuneConfig
from fuserank.config.load import (
    check_values,
    declared_checks,
    flatten,
    from_dict,
    load_config,
    to_dict,
    with_overrides,
)

__all__ = [
    "AudioConfig", "BehaviourConfig", "ConfigError", "DaskConfig", "DataConfig", "EvalConfig", "ExperimentConfig",
    "ExportConfig", "FeatureConfig", "FusionConfig", "ImageConfig", "LLMConfig", "RankerConfig", "RetrievalConfig",
    "RunConfig", "SequenceConfig", "SlotsConfig", "SourcesConfig", "SplitConfig", "TextConfig", "TrackingConfig",
    "TuneConfig", "VideoConfig", "cache_dir", "check_values", "declared_checks", "flatten", "from_dict", "load_config", "one_of",
    "ranged", "to_dict", "with_overrides",
]
