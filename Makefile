# Quick start on a fresh machine: `make demo` (install + the whole pipeline, quick preset) and
# `make test` (install + the test suite). Both create .venv from requirements.txt when needed; `make test` also
# installs the optional extras (requirements-ray.txt, requirements-tensorboard.txt) so the suite covers them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean-venv

$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-extras: $(VENV)/.installed requirements-ray.txt requirements-tensorboard.txt
	$(VENV)/bin/pip install --quiet -r requirements-ray.txt -r requirements-tensorboard.txt
	touch $@

demo: $(VENV)/.installed
	SDL_VIDEODRIVER=$${SDL_VIDEODRIVER:-dummy} $(PY) car_racing/demo.py

# pytest exits 5 when it collects no tests: that is not a failure of the suite.
test: $(VENV)/.installed-extras
	SDL_VIDEODRIVER=dummy $(PY) -m pytest; status=$$?; [ $$status -eq 0 ] || [ $$status -eq 5 ] || exit $$status

clean-venv:
	rm -rf $(VENV)
