# Set-up is part of every target: a project venv, torch first (only if absent), then the package.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nca-installed
TORCH  ?= torch==2.13.0

.PHONY: install test demo clean

$(PY):
	@if python3 -c "import torch" >/dev/null 2>&1; then \
		echo "using the torch already installed on this machine"; \
		python3 -m venv --system-site-packages $(VENV); \
	else \
		python3 -m venv $(VENV); \
	fi

$(STAMP): pyproject.toml setup.py | $(PY)
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q 

demo: install
	$(PY) -m nca_cli.demo

clean:
	rm -rf $(VENV) demo_out .pytest_cache
