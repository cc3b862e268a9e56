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
    DecontamConfig,
    EvalConfig,
    ExecutorConfig,
    ExperimentConfig,
    GenerateConfig,
    JudgeConfig,
    LoraConfig,
    ModelConfig,
    PromptsConfig,
    RoundsConfig,
    ScoreConfig,
    SelectConfig,
    judge_config,
    prompts_hashed,
    reward_component_name,
)

__all__ = [
    "SECTIONS",
    "Config",
    "DecontamConfig",
    "EvalConfig",
    "ExperimentConfig",
    "GenerateConfig",
    "JudgeConfig",
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
    "judge_config",
    "reward_component_name",
]
