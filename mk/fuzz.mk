# `make fuzz`: every `func FuzzXxx` of the module, one after the other, each for FUZZTIME
# with `go test -fuzz`, then a table of executions per target. No prerequisites: CI can
# call it on its own (it needs no root, BPF or control plane). `go test ./...` already
# runs each target's seed corpus as a plain test; this is the bounded random search.
#
#   make fuzz                        # every target, 10 s each
#   make fuzz FUZZTIME=1m FUZZ_MATCH=Decode   # targets whose "package name" matches
#
# A failing input is written by `go test` to <package>/testdata/fuzz/<target>/; commit it
# with the fix so that it stays a regression test. The log of each run is kept in
# FUZZ_LOG_DIR (a fresh temporary directory unless set). When FUZZTIME runs out while the
# engine is still replaying the cached corpus (a loaded machine, a large corpus), `go
# test` fails with "context deadline exceeded" and no failing input: that row says so and
# does not fail the target, since nothing was found; its execution count is then 0.
FUZZTIME ?= 10s
FUZZ_MATCH ?= .
FUZZ_LOG_DIR ?=

.PHONY: fuzz
fuzz: ## every fuzz target for FUZZTIME (default longer than CI)
	@set -uo pipefail; \
	logs="$(FUZZ_LOG_DIR)"; [ -n "$$logs" ] || logs=$$(mktemp -d -t execgate-fuzz.XXXXXX); mkdir -p "$$logs"; \
	targets=$$(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . | grep -v '^\./test/tools/' | sort | \
		while read -r file; do \
			for name in $$(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(f \*testing\.F\).*/\1/p' "$$file"); do \
				echo "./$$(dirname "$${file#./}") $$name"; \
			done; \
		done | grep -E -- '$(FUZZ_MATCH)'); \
	[ -n "$$targets" ] || { echo "fuzz: no target matches FUZZ_MATCH=$(FUZZ_MATCH)" >&2; exit 1; }; \
	echo "fuzz: $$(echo "$$targets" | wc -l) targets, $(FUZZTIME) each; logs in $$logs"; \
	table=""; total=0; failed=0; start=$$(date +%s); \
	while read -r pkg name; do \
		log="$$logs/$$(echo "$$pkg" | tr / _)-$$name.log"; t0=$$(date +%s); \
		if $(GO) test "$$pkg" -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) >"$$log" 2>&1; then result=ok; \
		elif grep -q 'context deadline exceeded' "$$log" && ! grep -qE 'Failing input|_test\.go:[0-9]+:' "$$log"; then \
			result="ok (FUZZTIME ended during baseline coverage)"; \
		else result=FAIL; failed=$$((failed + 1)); fi; \
		execs=$$(grep -oE 'execs: [0-9]+' "$$log" | tail -n 1 | grep -oE '[0-9]+' || true); execs=$${execs:-0}; \
		total=$$((total + execs)); \
		row=$$(printf '%-26s %-28s %12s %6ss  %s' "$$pkg" "$$name" "$$execs" "$$(( $$(date +%s) - t0 ))" "$$result"); \
		echo "$$row"; table="$$table$$row"$$'\n'; \
		if [ "$$result" = FAIL ]; then grep -v '^fuzz: elapsed' "$$log" | tail -n 20 | sed 's/^/    /'; fi; \
	done <<< "$$targets"; \
	echo; printf '%-26s %-28s %12s %7s  %s\n' package target executions time result; \
	printf '%s' "$$table"; \
	printf '%-26s %-28s %12s %6ss  %s\n' total "$$(echo "$$targets" | wc -l) targets" "$$total" "$$(( $$(date +%s) - start ))" \
		"$$([ $$failed -eq 0 ] && echo ok || echo "$$failed FAILED")"; \
	[ $$failed -eq 0 ]
