# The two commands a new machine needs (see README):
#   make dev    install, then start the local cluster (diffusion-operator dev up)
#   make test   install, lint (ruff, mypy), build the cluster binaries and our images, then run every tier
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml inference_image/pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: dev test lint install unit down clean

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dashboards]'
	@if [ -f inference_image/pyproject.toml ]; then \
	  echo "installing the sampler (torch and diffusers: a large first download, cached by pip after)"; \
	  $(BIN)/pip install --quiet -e './inference_image[test]'; fi
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

dev: install
	$(BIN)/diffusion-operator dev up

down: install
	$(BIN)/diffusion-operator dev down

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install lint
	@# binaries (CPU-bound Go builds) and images (mostly downloads and disk) side by side: cold, they
	@# are the two longest steps of a fresh machine
	$(BIN)/diffusion-operator dev build & build=$$!; \
	  $(BIN)/diffusion-operator dev images --with-s3; images=$$?; \
	  wait $$build && test $$images -eq 0
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
