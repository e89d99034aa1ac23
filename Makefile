# The two commands a newcomer runs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := $(CURDIR)/demo-workspace
LL := $(BIN)/lora-lab --workspace $(DEMO)
# Portable llama.cpp build; on a CUDA pod: make CMAKE_ARGS="-DGGML_CUDA=on" ...
CMAKE_ARGS ?= -DGGML_NATIVE=OFF
CHROMIUM ?= /usr/bin/chromium

LOCK := requirements/lock.txt
LABEXT := lora_lab/labextension
LABEXT_SRC := $(wildcard labextension/src/*.ts labextension/style/*) labextension/package.json \
    labextension/package-lock.json labextension/tsconfig.json
UV := .tools/bin/uv

.PHONY: demo test lint lock bench screenshots clean

# Exact versions from the committed lock: a release on the index cannot change what make
# installs. llama.cpp compiles from source (~10 min on 2 cores, once: pip caches the wheel).
# The project installs without build isolation: its build backend (hatchling and
# hatch-jupyter-builder) comes from the lock too, and the JupyterLab extension is built just before.
$(STAMP): $(LOCK) pyproject.toml Makefile $(LABEXT)/package.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# The JupyterLab extension, built from a clean tree whenever its sources, package.json or lock
# change, so no stale bundle can ship: npm ci installs the locked versions (~25 s), the build
# (tsc + rspack) takes ~8 s. Needs Node.js >= 20.19 and npm.
$(LABEXT)/package.json: $(LABEXT_SRC)
	command -v npm >/dev/null || { echo "the JupyterLab extension needs Node.js >= 20.19 and npm"; exit 1; }
	rm -rf $(LABEXT) labextension/lib labextension/tsconfig.tsbuildinfo
	cd labextension && npm ci --no-audit --no-fund && npm run build

# Refresh the lock from pyproject.toml's ranges, keeping the pins that still satisfy them;
# `make lock UPGRADE=--upgrade` moves everything to the newest (then make test on a fresh clone).
lock: $(UV)
	$(UV) pip compile pyproject.toml --extra caption --extra memory --extra track --extra ray --extra bucket --extra test $(UPGRADE) \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links /opt/wheels \
	    --override requirements/overrides.txt --quiet -o $(LOCK)

$(UV):
	$(PYTHON) -m venv .tools && .tools/bin/python -m pip install -q uv==0.13.8

# The browser test's browser (playwright's own download cannot run offline)
$(CHROMIUM):
	command -v apt-get >/dev/null || { echo "install chromium, or set CHROMIUM=/path/to/it"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# the tiny model works at 64 px; a real SD1.5 run keeps the defaults (512 px buckets)
DEMO_OVERRIDES := dataset.resolution=64, dataset.min_bucket=64, dataset.max_bucket=128, \
    dataset.trigger=lolab, train.max_steps=40, train.lr=1e-3, save.name=demo-lora, \
    save.every_n_steps=20, sample.every_n_steps=20, "sample.prompts=lolab, a red circle", sample.steps=4

demo: $(STAMP)
	rm -rf $(DEMO)
	$(LL) tiny $(DEMO)/models/tiny
	$(LL) dataset ingest $(DEMO)/models/tiny/samples --name demo
	$(LL) dataset show demo
	# random-weight tiny model: the captions are gibberish, the road is real
	$(LL) caption demo --model $(DEMO)/models/tiny/caption/tiny-qwen25vl.gguf \
	    --mmproj $(DEMO)/models/tiny/caption/tiny-qwen25vl-mmproj.gguf --trigger lolab --max-tokens 16
	$(LL) dataset edit demo --prefix lolab --normalize
	$(LL) dataset export demo --trigger lolab --repeats 10
	$(LL) dataset export demo --trigger lolab --repeats 10 --format zip
	$(LL) calc --dataset demo --repeats 10 --epochs 4 --batch 2
	$(LL) train --init $(DEMO)/train.toml --base $(DEMO)/models/tiny/sd15 --dataset demo
	# the training pipeline notebook, run headless by papermill
	$(BIN)/papermill notebooks/pipelines/train.ipynb $(DEMO)/train-run.ipynb --log-output \
	    -p config $(DEMO)/train.toml -y '{workspace: "$(DEMO)", overrides: [$(DEMO_OVERRIDES)]}'
	@echo
	@echo "Demo outputs:"
	@echo "  dataset:       $(DEMO)/datasets/demo  (captions beside the images)"
	@echo "  caption job:   $(DEMO)/jobs/  (status.json, events.jsonl)"
	@echo "  kohya export:  $(DEMO)/exports/demo-kohya  (with dataset.toml for sd-scripts)"
	@echo "  zip export:    $(DEMO)/exports/demo-zip.zip"
	@echo "  train config:  $(DEMO)/train.toml"
	@echo "  train record:  $(DEMO)/train-run.ipynb  (executed pipeline notebook: config, dataset stats, loss curve, samples, LoRA path)"
	@echo "  train job:     $(DEMO)/jobs/*-train-*  (checkpoints/, samples/, events.jsonl)"
	@echo "  LoRA:          $(DEMO)/loras/demo-lora.safetensors  (kohya keys: ComfyUI, A1111, diffusers)"
	@echo "  tiny models:   $(DEMO)/models/tiny"

test: $(STAMP) $(CHROMIUM) lint
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check --no-cache .

# the README's pictures of the panels, taken by the browser test in a real JupyterLab
screenshots: $(STAMP) $(CHROMIUM)
	LORA_LAB_SCREENSHOTS=$(CURDIR)/docs/screenshots CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest tests/test_browser.py \
	    tests/test_labextension.py -k "panels or launcher_card or keyboard_captioning"

bench: $(STAMP)
	sh bench/run_all.sh

clean:
	rm -rf $(DEMO) .pytest_cache .tools
