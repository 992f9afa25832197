# Two commands on a fresh machine:
#   make run    set up (.venv) and open the optbench workbench on the embedded offline demo model
#   make test   set up (.venv) and run the whole test suite
.PHONY: run test setup bench-monitor
setup:
	@scripts/setup.sh
run: setup
	@.venv/bin/optbench --model demo:smollm2
test: setup
	@.venv/bin/python -m pytest -q
bench-monitor: setup
	@.venv/bin/python benchmarks/monitor_overhead.py
