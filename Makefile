# The two commands of the README, plus helpers.  Each installs what it needs on first use.
.PHONY: up down test lint bench bench-e2e bench-sinks chaos chaos-isolation bench-recovery bench-state bench-taxii

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
	@for b in normalise route guard dedup connectors feedback; do .venv/bin/python -m bench.$$b || exit 1; done

chaos-isolation: ## the long ingest-isolation scenario (heavy org vs plain org; needs a broker: `make up` first)
	@bash deploy/bootstrap.sh
	@.venv/bin/python -m bench.isolation

chaos:         ## long crash/outage scenarios (docs/runbook.md) against a real broker, on demand
	@bash deploy/test.sh -m chaos

bench-recovery: ## kill -9 → first delivery (median of restarts) and a crash loop; needs a broker
	@bash deploy/bootstrap.sh
	@.venv/bin/python -m bench.recovery && .venv/bin/python -m bench.recovery --crash-loop 10 --duration 120

bench-state:   ## dedup state of 1M and 10M keys: disk, worker RSS, cold rebuild; needs a broker
	@bash deploy/bootstrap.sh
	@.venv/bin/python -m bench.state --keys 1000000 && .venv/bin/python -m bench.state --keys 10000000

bench-taxii:   ## TAXII server paging 100k objects, p99 page latency at 10 clients, RSS (needs a broker)
	@bash deploy/bootstrap.sh
	@.venv/bin/python -m bench.taxii

bench-e2e:     ## the whole pipeline on the real broker vs a raw aiokafka passthrough (not CI; broker up first)
	@bash deploy/bootstrap.sh
	@.venv/bin/python -m bench.e2e $(BENCH_ARGS)

bench-sinks:   ## network sinks: publish -> presence p50/p99 per sink, 1M-entry regeneration (needs the test broker: KAFKA_PORT)
	@bash deploy/bootstrap.sh
	@.venv/bin/python -m bench.sinks
