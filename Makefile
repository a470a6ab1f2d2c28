# The two commands of the README: `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sa-ray-installed
CONFIG ?= configs/tiny.yaml
ARGS ?=
# The shipped base model (+ the codec its codes belong to) and where it stopped in the 6000-step schedule.
BASE ?= checkpoints/base
BASE_STEPS ?= 2500

.PHONY: install lock lint format demo test test-fast prepare pretrain pretrain-base pretrain-base-big align arms arms-test compare-methods serve bench clean

$(STAMP): pyproject.toml requirements/*.txt scripts/install.sh scripts/install-system.sh
	bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

lock:  ## re-resolve requirements/*.txt (every dependency pinned) after pyproject.toml's dependencies changed
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "pip==$$(sed -n 's/^pip==//p' requirements/build.txt)"
	$(PY) scripts/lock.py

demo: install  ## prepare -> base model (the shipped checkpoint) -> 3 SpeechAlign iterations -> compare, on configs/tiny.yaml
	$(PY) -m jobs.prepare --config $(CONFIG) codec.path=$(BASE)/codec $(ARGS)
	$(PY) -m jobs.pretrain --config $(CONFIG) codec.path=$(BASE)/codec pretrain.init_from=$(BASE) pretrain.eval_utterances=0 $(ARGS)
	$(PY) -m jobs.align --config $(CONFIG) codec.path=$(BASE)/codec $(ARGS)
	$(PY) -m jobs.compare --config $(CONFIG) $(ARGS)
	@echo "Hear the champion policy (the base until a version beats it beyond noise): make serve, then curl -s localhost:8000/synthesize -d '{\"text\": \"Hello there.\", \"speaker\": \"mbrola-us1\"}' -o hello.wav (docs/serve.md)"

prepare: install
	$(PY) -m jobs.prepare --config $(CONFIG) $(ARGS)

pretrain: install  ## train the base codec LM (resumes when re-run)
	$(PY) -m jobs.pretrain --config $(CONFIG) $(ARGS)

pretrain-base: install  ## reproduce checkpoints/base: fit the codec, train the base recipe (hours), ship bf16
	$(PY) -m jobs.prepare --config $(CONFIG) run_dir=runs/base $(ARGS)
	$(PY) -m jobs.pretrain --config $(CONFIG) run_dir=runs/base pretrain.stop_after=$(BASE_STEPS) $(ARGS)
	$(PY) -m jobs.ship_base --model runs/base/pretrain/model --codec runs/base/codec --out $(BASE)

pretrain-base-big: install  ## reproduce checkpoints/base-big: checkpoints/base trained on from step 2,500 with 3,000 more sentences (~1 h)
	$(PY) -m jobs.prepare --config $(CONFIG) run_dir=runs/big codec.path=checkpoints/base/codec corpus.extra_train_sentences=3000 $(ARGS)
	$(PY) -m jobs.pretrain --config $(CONFIG) run_dir=runs/big codec.path=checkpoints/base/codec pretrain.warm_start=checkpoints/base \
	    pretrain.warm_start_step=2500 pretrain.steps=3500 pretrain.eval_every=250 pretrain.eval_utterances=0 $(ARGS)
	$(PY) -m jobs.ship_base --model runs/big/pretrain/model --codec runs/big/codec --out checkpoints/base-big

align: install  ## the SpeechAlign loop on an existing base model (resumes when re-run)
	$(PY) -m jobs.align --config $(CONFIG) $(ARGS)

arms: install  ## after `make demo`: the evidence arms side by side, one iteration each, on dev (SPLIT=test to confirm; scripts/arms.sh)
	bash scripts/arms.sh $(ARGS)

METHODS ?= sft dpo cdpo ipo rpo simpo coh grpo ppo
arms-test: install  ## after `make arms` and the more-prompts arms: docs/results.md's test table (each arm evaluated on test once; scripts/test_table.sh)
	bash scripts/test_table.sh

compare-methods: install  ## after `make demo`: every method, one iteration each from the same base and budget, side by side on dev (table + plots)
	OUT=runs/methods PREFIX=method ARMS="$(METHODS)" bash scripts/arms.sh $(ARGS)
	$(PY) -m jobs.compare --config $(CONFIG) --runs "$(shell echo $(addprefix align-method-,$(METHODS)) | tr ' ' ,)" \
	    --out runs/methods/compare

serve: install  ## after `make demo`: a Ray Serve endpoint for the champion policy (docs/serve.md); Ctrl-C stops it
	$(PY) -m jobs.serve --config $(CONFIG) $(ARGS)

BENCH_STAMP := $(VENV)/.sa-ray-bench-installed

# TRL (pyproject's bench extra) for benchmarks/learner_bench.py, at the versions of requirements/bench.txt
$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/bench.txt
	touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)  ## every benchmark, one table + bench.json (after make demo: the evaluation and codec ones too)
	$(PY) -m benchmarks.run_all --json bench.json --run-dir runs/tiny --base $(BASE) $(ARGS)

test: install lint  ## the whole suite (its Ray tier and unit tier side by side: scripts/test.sh), after the formatter and linter checks
	bash scripts/install-system.sh --test
	PY=$(PY) bash scripts/test.sh $(ARGS)

lint: install  ## ruff: the code is formatted (`make format` formats it) and lint-clean
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .

format: install
	$(VENV)/bin/ruff format --quiet . && $(VENV)/bin/ruff check --quiet --fix .

test-fast: install  ## the unit tier, minutes: no Ray, no job (SA_RAY_TEST_FAST=1 fails a test that starts Ray)
	PY=$(PY) bash scripts/test.sh --unit $(ARGS)

clean:
	rm -rf runs mlruns data/corpus .pytest_cache
