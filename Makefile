# The two set-up commands of the README: `make serve` and `make test`. Each makes .venv first.
# Every install goes through constraints.txt, which pins torch: an unpinned torch (or anything that
# drags torchvision) would swap the CPU build for gigabytes of CUDA libraries.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 5006
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: serve test install browser benchmark clean

# torch goes in first. With a GPU (nvidia-smi answers): the default build. Without one: a CPU wheel
# that pip's own configuration already provides (a local wheel folder, as on these machines), else
# the CPU build from PyTorch's CPU index; the default build on Linux would bring CUDA libraries.
TORCH := torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) $(TORCH); \
	else $(PIP) --no-index --no-deps $(TORCH) 2>/dev/null || $(PIP) --index-url $(TORCH_CPU_INDEX) $(TORCH); fi
	$(PIP) -e ".[test,jupyter,bench]"
	# mup (the μP reference the tests and benchmarks compare against) declares an unpinned torchvision it never
	# imports: installed alone, without dependencies (it needs numpy, pandas and pyyaml, installed above)
	$(PIP) --no-deps mup
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/trainlab serve --port $(PORT)

# Chromium for the browser test comes from Debian (never `playwright install`, which downloads).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "The browser test needs Chromium: sudo apt-get install chromium"; exit 1; fi; }

test: install browser
	$(PY) -m pytest

# every benchmark prints trainlab's time beside its peer's and the ratio, measured in one process
benchmark: install
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV)
