# The two commands of the README, plus helpers.  Each installs what it needs on first use.
.PHONY: up down test lint bench bench-sinks

up:            ## run the local bus: Kafka + worker + example agreements + a demo publish
	@bash deploy/bootstrap.sh
	@.venv/bin/stixbus up

down:          ## stop the worker and Kafka
	@bash deploy/bootstrap.sh
	@.venv/bin/stixbus down

test:          ## import-linter, ruff, mypy and pytest against a real local Kafka broker
	@bash deploy/test.sh

lint:
	@bash deploy/bootstrap.sh
	@.venv/bin/lint-imports && .venv/bin/ruff check . && .venv/bin/mypy

bench:         ## every benchmark, printing numbers (not CI); dedup/connectors need a broker: `make up` first
	@bash deploy/bootstrap.sh
	@for b in normalise route dedup connectors; do .venv/bin/python -m bench.$$b || exit 1; done

bench-sinks:   ## network sinks: publish -> presence p50/p99 per sink, 1M-entry regeneration (needs the test broker: KAFKA_PORT)
	@bash deploy/bootstrap.sh
	@.venv/bin/python -m bench.sinks
