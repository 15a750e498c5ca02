# The two commands a new machine needs (see README):
#   make dev    install, then start the local cluster (diffusion-operator dev up)
#   make test   install, then run every test tier against a real local cluster
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml inference_image/pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: dev test install unit down clean

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@if [ -f inference_image/pyproject.toml ]; then \
	  echo "installing the sampler (torch and diffusers: a large first download, cached by pip after)"; \
	  $(BIN)/pip install --quiet -e './inference_image[test]'; fi
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

dev: install
	$(BIN)/diffusion-operator dev up

down: install
	$(BIN)/diffusion-operator dev down

test: install
	$(BIN)/diffusion-operator dev build
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
