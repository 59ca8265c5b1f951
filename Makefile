# Blenderfarm: `make demo` renders a sample animation on a local farm; `make test` runs
# every check. Both set up what they need on a fresh Debian machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps venv blender ffmpeg chromium xvfb addon test lint typecheck pytest demo bench clean

all: test

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Debian's Blender when none is on PATH (BLENDER=/path/to/blender overrides).
blender:
	@if [ -n "$$BLENDER" ] && [ -x "$$BLENDER" ]; then echo "using Blender $$BLENDER"; \
	elif command -v blender >/dev/null 2>&1; then echo "using $$(command -v blender)"; \
	else echo "installing Debian's blender"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q blender; fi

# Debian's FFmpeg (with libx264) for the jobs' videos when none is on PATH.
ffmpeg:
	@if command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; then \
	  echo "using $$(command -v ffmpeg)"; \
	else echo "installing Debian's ffmpeg"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q ffmpeg; fi

deps: venv blender ffmpeg

# Debian's Chromium for the dashboard's browser tests (Playwright drives it; never `playwright install`).
chromium:
	@if [ -x /usr/bin/chromium ]; then echo "using /usr/bin/chromium"; \
	else echo "installing Debian's chromium"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; fi

lint: venv
	$(BIN)/ruff check blenderfarm tests bench examples addon build_addon.py

typecheck: venv
	$(BIN)/mypy
	$(BIN)/mypy build_addon.py

pytest: deps chromium xvfb
	$(BIN)/pytest -q

test: deps lint typecheck pytest

# The add-on zips (legacy and extension) in dist/.
addon: venv
	$(BIN)/python build_addon.py

# Xvfb for the add-on's UI test (Blender's real interface on a virtual screen).
xvfb:
	@command -v xvfb-run >/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q xvfb; }

demo: deps
	$(BIN)/python examples/demo.py

# Scale (simulated nodes against a real server), rendering (real Blender), end to
# end through the bf command line (submit + wait), persistent data on a heavy scene and
# a bpy-module node beside a Blender-executable node, tiles and video, splitting a frame;
# all write their figures to docs/benchmarks.md. Fails if a scale or end-to-end target
# is missed.
bench: deps
	$(BIN)/python bench/scale_bench.py --write docs/benchmarks.md; status=$$?; \
	$(BIN)/python bench/render_bench.py --write docs/benchmarks.md || exit 1; \
	$(BIN)/python bench/e2e_bench.py --write docs/benchmarks.md || status=1; \
	$(BIN)/python bench/persistent_bench.py --write docs/benchmarks.md || status=1; \
	$(BIN)/python bench/node_kinds_bench.py --write docs/benchmarks.md || status=1; \
	$(BIN)/python bench/tiles_bench.py --write docs/benchmarks.md || status=1; \
	$(BIN)/python bench/split_bench.py --write docs/benchmarks.md || status=1; exit $$status

clean:
	rm -rf $(VENV) demo-data build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache
