"""Experiment configuration: one typed dataclass per section (`sections`), loaded from one YAML file per experiment
with `section.key=value` overrides, and hashed so that artifacts of two configs never mix (`loader`).
"""

from raft_data.config.loader import (
    config_from_dict,
    config_hash,
    derived_seed,
    load_config,
    parse_override,
    read_text_file,
    read_yaml,
)
from raft_data.config.sections import (
    SECTIONS,
    Config,
    EvalConfig,
    ExecutorConfig,
    ExperimentConfig,
    GenerateConfig,
    LoraConfig,
    ModelConfig,
    PromptsConfig,
    RoundsConfig,
    ScoreConfig,
    SelectConfig,
    prompts_hashed,
    reward_component_name,
)

__all__ = [
    "SECTIONS",
    "Config",
    "EvalConfig",
    "ExperimentConfig",
    "GenerateConfig",
    "ExecutorConfig",
    "LoraConfig",
    "ModelConfig",
    "PromptsConfig",
    "RoundsConfig",
    "ScoreConfig",
    "SelectConfig",
    "config_from_dict",
    "config_hash",
    "derived_seed",
    "load_config",
    "parse_override",
    "read_text_file",
    "prompts_hashed",
    "read_yaml",
    "reward_component_name",
]
