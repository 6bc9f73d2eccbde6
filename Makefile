# The two commands: `make run` (serve on 127.0.0.1:8000) and `make test` (lint + tests).
# Both create .venv and install what they need. GPU users: `make install TORCH=torch` in a venv
# where the CUDA build of torch is wanted (see README).

VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install run test lint tools bench clean demo search

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	GPT2_LOG_FORMAT=$${GPT2_LOG_FORMAT:-text} $(VENV)/bin/gpt2-serve serve

tools:
	scripts/install-tools.sh

lint: install tools
	$(VENV)/bin/ruff check app tests bench examples
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/lint-deploy.sh; rc=$$?; \
	if [ $$rc -eq 127 ] && [ "$${CI:-}" != true ]; then echo "deploy lint SKIPPED: tools missing (above)"; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi

test: lint
	HF_HUB_OFFLINE=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/engine.py

# The worked example of docs/training.md: fetch the Brown Corpus, train a small GPT-2 on it from
# scratch (~15 min on 2 CPU cores), serve it, print two completions. Not part of `make test`.
demo: install
	scripts/demo.sh

# The semantic-search example of docs/embeddings.md on `make demo`'s model: embed the King James Bible's
# passages through /v1/embeddings and measure retrieval on 60 labelled queries. Not part of `make test`.
search: install
	HF_HUB_OFFLINE=1 $(PY) examples/semantic-search/search.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
