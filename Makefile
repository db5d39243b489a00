# Two set-up commands (see README): `make demo` (main job) and `make test` (test suite).
# Both create .venv and install everything on first use.
#
# CPU machines (default): torch is pinned by constraints/cpu.txt; on a stock machine add
# TORCH_INDEX=https://download.pytorch.org/whl/cpu so pip takes PyTorch's CPU wheel, not the
# multi-GB CUDA build. GPU machines: `make install TORCH=torch CONSTRAINTS= EXTRAS=gpu,dev`
# (torch's default wheel is the CUDA build; Faiss from the [gpu] extra).

PYTHON      ?= python3
VENV        ?= .venv
DATA        ?= ../shared/data
TORCH       ?= torch==2.13.0
CONSTRAINTS ?= constraints/cpu.txt
EXTRAS      ?= cpu,dev
# a stock CPU machine: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu (PyTorch's CPU wheels)
TORCH_INDEX ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.hardneg-installed
DOCS_STAMP  := $(VENV)/.hardneg-docs-installed
PIPC        := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow bench lint docs clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIPC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/python -m pip install --quiet $(PIPC) -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

# Main job: the demo recipe (configs/demo.yaml): BM25, zero-shot MiniLM, ADORE and WiSE-FT on SciFact,
# ending with the comparison table; stages are cached, so a second `make demo` only prints the table.
demo: install
	$(BIN)/hardneg experiment configs/demo.yaml --data-dir $(DATA)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# every ratio in one run (about 25 minutes on 2 cores): encode and train vs sentence-transformers, ADORE's
# step split, search vs raw Faiss, mining and dev-evaluation queries/s; then one table of them all
bench: install
	$(BIN)/python benchmarks/encode.py --data $(DATA)/scifact --out benchmarks/results/encode.json
	$(BIN)/python benchmarks/train.py --data $(DATA)/scifact --steps 3 --out benchmarks/results/train.json
	$(BIN)/python benchmarks/adore_step.py --data $(DATA)/scifact --sizes 100000 --steps 2
	$(BIN)/python benchmarks/search.py
	$(BIN)/python benchmarks/scale.py --sizes 100000 --stages dev_eval mine --out benchmarks/results/scale-bench.json
	$(BIN)/python benchmarks/summary.py

# ruff, then the import contracts of pyproject.toml ([tool.importlinter]: layers, no cycles, methods apart
# from the loop), which count imports inside functions too
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --no-cache

# the documentation site (mkdocs.yml, docs/): the [docs] extra is installed into .venv on first use, then a
# strict build into site/ (a broken link, a page missing from the nav or an unrenderable docstring fails)
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet $(PIPC) -e '.[$(EXTRAS),docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs site .pytest_cache
