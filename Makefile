# The two commands of the README:
#   make demo   set up this machine, then generate a zone, split, serve, replay and report
#   make test   set up this machine, then run the default test suite
# Long benchmarks have their own targets (make bench-*); nothing here needs manual installs.

VENV := .venv
PY := $(VENV)/bin/python
ZS := $(VENV)/bin/zoneslice
DEMO_DIR ?= out/demo
DELEGATIONS ?= 20000
PARTS ?= 3

.PHONY: setup demo test lint bench-split bench-engine bench-pcap bench-xdp bench-update bench-neighbour clean

setup:
	bash scripts/setup.sh

demo: setup
	$(ZS) demo --dir $(DEMO_DIR) --delegations $(DELEGATIONS) --parts $(PARTS)

test: setup
	bash scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check .

bench-split: setup
	$(PY) bench/bench_split.py

bench-engine: setup
	$(PY) bench/bench_engine.py

bench-pcap: setup
	$(PY) bench/bench_pcap.py

bench-xdp: setup
	$(PY) bench/bench_xdp.py

bench-update: setup
	$(PY) bench/bench_update.py

bench-neighbour: setup
	$(PY) bench/bench_neighbour.py

clean:
	rm -rf out .pytest_cache
