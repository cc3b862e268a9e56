"""Generation backends: the contract (`base`: Completion, SampleFn) and one module per engine, named here.
Each entry loads a model once and returns a function that samples K completions per prompt.
"""

from raft_data.backends.base import BackendFn
from raft_data.backends.openai import openai_backend
from raft_data.backends.transformers import transformers_backend
from raft_data.backends.vllm import vllm_backend

BACKENDS: dict[str, BackendFn] = {
    "transformers": transformers_backend,  # this process, on CPU or one GPU
    "vllm": vllm_backend,  # vLLM's offline engine (its own environment: `make setup-vllm`)
    "openai": openai_backend,  # any OpenAI-compatible server
}
