# The two commands of the README: `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sa-ray-installed
CONFIG ?= configs/tiny.yaml
ARGS ?=

.PHONY: install demo test test-fast prepare pretrain clean

$(STAMP): pyproject.toml scripts/install.sh scripts/install-system.sh
	bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the main job on the embedded default (configs/tiny.yaml)
	$(PY) -m jobs.prepare --config $(CONFIG) $(ARGS)

prepare: install
	$(PY) -m jobs.prepare --config $(CONFIG) $(ARGS)

pretrain: install  ## train the base codec LM (resumes when re-run)
	$(PY) -m jobs.pretrain --config $(CONFIG) $(ARGS)

test: install  ## the whole suite
	bash scripts/install-system.sh
	$(PY) -m pytest -q -ra $(ARGS)

test-fast: install  ## skip the slow end-to-end tests
	$(PY) -m pytest -q -m "not slow" $(ARGS)

clean:
	rm -rf runs mlruns data/corpus .pytest_cache
