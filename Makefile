# The targets are the commands the README documents. The virtual environment and node_modules
# are created once and reinstalled only when their requirement files change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
SYSTEM_STAMP := .localcloud/.system-packages
REQUIREMENTS := $(wildcard requirements/*.txt)
# Debian packages the suite uses: shellcheck lints the instance user-data, chromium drives the
# page test. Installed only when missing.
DEBIAN_PACKAGES := shellcheck chromium
export TF_CPP_MIN_LOG_LEVEL := 3
export TF_USE_LEGACY_KERAS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install test test-fast lint demo local bench bench-load bench-train bench-fresh bench-cold bench-score bench-drift bench-import models web lock clean

help:
	@echo "make demo   - run the whole retraining loop on the local cloud, then stop"
	@echo "make demo ARGS=--drift - the drift scenario: traffic shifts, a rule retrains, accuracy recovers"
	@echo "make test   - install what the tests need and run them"
	@echo "make local  - keep the local cloud running in the foreground (Ctrl-C stops it)"
	@echo "make bench  - the prediction benchmark (figures, not assertions)"
	@echo "make bench-load - bursts of 50-200 clients and 100,000 samples flowing (figures)"
	@echo "make bench-train - a retrain at 1k-1M samples, old trainer vs new: time, memory, accuracy"
	@echo "make bench-fresh - 100,000 samples posted, one retrain: from POST to /infer, by phase"
	@echo "make bench-cold - the traffic function's image: cold start and size, against the old layer"
	@echo "make image IMAGE=traffic - build the traffic function's image (without docker: build/traffic-image)"
	@echo "make bench-score - live scoring: the score function's time per record, first delivery and replay"
	@echo "make bench-drift - the drift scenario's figures: detection delay, false triggers, live accuracy"
	@echo "make bench-import - a 100,000-row bulk import against POST /upload: rows/s, memory, time to done"
	@echo "make lint   - ruff and mypy"
	@echo "make models - print the model table of the running local cloud (or AWS)"
	@echo "make web    - build/web: the page as static files (API=https://... names the API)"

$(STAMP): $(REQUIREMENTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt -c requirements/lock.txt
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(SYSTEM_STAMP):
	@mkdir -p $(dir $@)
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

install: $(STAMP) $(NODE_STAMP) $(SYSTEM_STAMP)

test: install
	IAM_COVERAGE=strict $(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: install
	$(PY) -m scripts.demo $(ARGS)

local: install
	$(PY) -m localcloud $(ARGS)

bench: install
	$(PY) -m scripts.bench_infer

bench-load: install
	$(PY) -m scripts.bench_load

bench-train: install
	$(PY) -m scripts.bench_train $(ARGS)

bench-fresh: install
	$(PY) -m scripts.bench_fresh $(ARGS)

bench-cold: install
	$(PY) -m scripts.bench_coldstart $(ARGS)

bench-score: install
	$(PY) -m scripts.bench_score $(ARGS)

bench-drift: install
	$(PY) -m scripts.bench_drift $(ARGS)

bench-import: install
	$(PY) -m scripts.bench_import $(ARGS)

models: $(STAMP)
	$(PY) -m scripts.models

web: $(STAMP) $(NODE_STAMP)
	$(PY) -m scripts.build_web $(if $(API),--api $(API))

lock: $(STAMP)
	{ sed -n '/^#/p' requirements/lock.txt; $(PY) -m pip freeze --exclude-editable; } > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

clean:
	rm -rf .localcloud .pytest_cache .ruff_cache .mypy_cache

# Deploying to AWS (infra/README.md): STAGE and REGION select the stack; deploy, remove and
# image use the current AWS credentials. package needs them too, and a docker daemon: osls asks
# CloudFormation whether the layer is already uploaded, and builds the traffic function's image
# and pushes it to ECR (the offline test answers from moto, with a docker stand-in).
STAGE ?= dev
REGION ?= us-east-1
FUNCTION ?= train
.PHONY: package deploy remove logs image

package: $(STAMP) $(NODE_STAMP)
	scripts/deploy.sh package $(STAGE) $(REGION)

deploy: $(STAMP) $(NODE_STAMP)
	scripts/deploy.sh deploy $(STAGE) $(REGION)

remove: $(STAMP) $(NODE_STAMP)
	scripts/deploy.sh remove $(STAGE) $(REGION)

logs: $(STAMP) $(NODE_STAMP)
	scripts/deploy.sh logs $(STAGE) $(FUNCTION) $(REGION)

# IMAGE=trainer (the default) builds the trainer image and pushes it to the stage's repository.
# IMAGE=traffic builds the traffic function's image here (deploy builds and pushes it itself):
# with docker when a daemon answers, else its steps are carried out into build/traffic-image.
IMAGE ?= trainer
image:
ifeq ($(IMAGE),traffic)
	@if docker info >/dev/null 2>&1; then \
	  docker build --platform linux/amd64 --provenance=false -f lambdas/traffic.Dockerfile -t autoretrain-traffic . ; \
	else \
	  echo "no docker daemon: carrying out lambdas/traffic.Dockerfile into build/traffic-image"; \
	  $(MAKE) --no-print-directory $(STAMP) && $(PY) -m localcloud.imagebuild build lambdas/traffic.Dockerfile . build/traffic-image; \
	fi
else ifeq ($(IMAGE),trainer)
	scripts/image.sh $(STAGE) $(REGION)
else
	$(error IMAGE must be trainer or traffic, not $(IMAGE))
endif
