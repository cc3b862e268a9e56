"""A small OpenAI-compatible server for tests: a real causal LM served through transformers on 127.0.0.1, greedy, one
request at a time, answering /v1/completions and /v1/chat/completions (the chat template applied here, as servers
do). It counts the requests it answers, so tests can check what a client asked and what it did not.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ModelServer:
    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.lock = threading.Lock()  # one generation at a time
        self.requests: list[tuple[str, dict]] = []
        self.answers: dict[str, str] = {}  # the text of each prompt (after the chat template) -> its answer

    def complete(self, text: str, max_tokens: int) -> tuple[str, int, int]:
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        with self.lock, self.torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=self.torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        new = out[0, ids.shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True), len(new), ids.shape[1]

    def answer(self, path: str, body: dict) -> dict:
        chat = path.endswith("/chat/completions")
        if chat:
            text = self.tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        else:
            text = body["prompt"]
        answer, n_new, n_prompt = self.complete(text, int(body.get("max_tokens", 16)))
        self.answers[body["messages"][-1]["content"] if chat else text] = answer
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "length"}
        else:
            choice = {"index": 0, "text": answer, "finish_reason": "length"}
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_new}
        return {
            "id": "x",
            "object": "chat.completion" if chat else "text_completion",
            "choices": [choice],
            "usage": usage,
        }


@contextmanager
def serving(model_dir: Path) -> Iterator[tuple[ModelServer, str]]:
    """(the server's state, its base URL ending in /v1) while the block runs."""
    state = ModelServer(model_dir)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append((self.path, body))
            data = json.dumps(state.answer(self.path, body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def make_judge_model(
    model_dir: Path, out: Path, words: tuple[str, ...] = ("7", "3", "yes", "no", "maybe", "ok")
) -> Path:
    """A copy of the causal LM at `model_dir` that answers, greedily, only with one of `words`: their (tied) embedding
    rows are set to large opposite pairs along two fixed directions, so every hidden state's logits favour one word
    of each pair, and which one depends on the input. A real forward pass, read as a judge: "7" and "3" parse as
    scores, "yes" and "no" as verdicts, "maybe" and "ok" as neither."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = []
    for word in words:
        found = tokenizer.encode(word, add_special_tokens=False)
        assert len(found) == 1, (word, found)
        ids.append(found[0])
    weight = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pair in range(len(ids) // 2):
            direction = torch.randn(weight.shape[1], generator=generator)
            direction = 60.0 * direction / direction.norm()
            weight[ids[2 * pair]] = direction
            weight[ids[2 * pair + 1]] = -direction
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
