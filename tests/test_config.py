from pathlib import Path

import pytest
import yaml

from raft_data.config import config_from_dict, load_config
from raft_data.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "pipelines" / "imdb_positive.yaml"


def test_default_pipeline_loads_and_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT)
    assert cfg.generate.n_samples == 16 and cfg.generate.top_k == 0
    path = tmp_path / "again.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_precedence_defaults_then_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(
        yaml.safe_dump({"model": {"name_or_path": "m"}, "prompts": {"path": "p.jsonl"}, "generate": {"n_samples": 2}})
    )
    assert load_config(path).generate.n_samples == 2  # file beats default
    assert load_config(path).generate.temperature == 1.0  # default kept
    cfg = load_config(path, ["generate.n_samples=8", "generate.temperature=0.7", "sft.learning_rate=2e-5"])
    assert cfg.generate.n_samples == 8 and cfg.generate.temperature == 0.7
    assert cfg.sft["learning_rate"] == 2e-5
    assert load_config(path).generate.batch_size == "auto"
    assert load_config(path, ["generate.batch_size=32"]).generate.batch_size == 32


@pytest.mark.parametrize(
    "override, message",
    [
        ("generate.n_samples=0", "generate.n_samples=0"),
        ("generate.temperature=-1", "generate.temperature=-1"),
        ("generate.top_p=1.5", "generate.top_p=1.5"),
        ("generate.n_sample=3", "unknown key generate.n_sample"),
        ("generat.n_samples=3", "unknown section"),
        ("generate.n_samples=many", "generate.n_samples='many'"),
        ("generate.batch_size=big", "generate.batch_size='big'"),
        ("generate.batch_size=0", "generate.batch_size=0"),
        ("prompts.n_prompts=0", "prompts.n_prompts=0"),
        ("model.dtype=int3", "model.dtype='int3'"),
        ("select.memory_limit=lots", "select.memory_limit='lots'"),
        ("n_samples=3", "expected section.key=value"),
    ],
)
def test_bad_values_and_unknown_keys_name_the_key_and_value(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(DEFAULT, [override])


def test_missing_model_and_unknown_section_in_file() -> None:
    with pytest.raises(ConfigError, match="model.name_or_path"):
        config_from_dict({"prompts": {"path": "p.jsonl"}})
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        config_from_dict({"modle": {}})


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
