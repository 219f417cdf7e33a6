# `make chaos`: the reliability and security report (issue 8). Runs the fault suite
# through the real control plane (agent crash, partition, API server restart, update
# storm, pod churn, fail-open), the mTLS refusals and the escape attempts on the real
# kernel, then the fuzz targets, and prints one line per case with its result, then the
# totals: faults survived, escapes tried and denied, fuzz executions. `make test` runs the
# same tests (and the fuzz targets for CI_FUZZTIME); this target is the readable report.
CHAOS_LOG ?= $(CURDIR)/chaos-report.txt

.PHONY: chaos
chaos: deps tools ## fault-injection runs against the local control plane
	@set -uo pipefail; : > $(CHAOS_LOG); status=0; \
	run() { $(GO) test -count=1 -timeout 40m -v "$$@" 2>&1 | grep -E '^\s*--- (PASS|FAIL)|fault:|^(ok|FAIL)\s' >> $(CHAOS_LOG) || true; }; \
	run -run 'TestFaults|TestFailOpen|TestControllerLeaderElection' ./test/e2e/; \
	run -run 'TestEscapeAttempts|TestGateCrashFailsSafe|TestGateHangIsBounded|TestConcurrentExecs' ./nodeagent/enforcer/; \
	run -run 'TestRefusedClients|TestRefusedTransports|TestNoTLSWithoutInsecure' ./nodeagent/server/; \
	sed -E 's/^\s+//' $(CHAOS_LOG); echo; \
	faults=$$(grep -cE -- '--- PASS: (Test(Faults|FailOpen)/|TestControllerLeaderElection|TestGate)' $(CHAOS_LOG)); \
	faultsFailed=$$(grep -cE -- '--- FAIL: (Test(Faults|FailOpen)/|TestControllerLeaderElection|TestGate)' $(CHAOS_LOG)); \
	escapes=$$(grep -cE -- '--- (PASS|FAIL): TestEscapeAttempts/[^/ ]+/' $(CHAOS_LOG)); \
	modes=$$(grep -oE -- '--- PASS: TestEscapeAttempts/[^/ ]+ ' $(CHAOS_LOG) | sed -E 's/.*\/(.*) /\1/' | tr '\n' ' '); \
	tls=$$(grep -cE -- '--- PASS: (TestRefusedTransports|TestRefusedClients)/' $(CHAOS_LOG)); \
	echo "faults survived: $$faults (failed: $$faultsFailed); escape attempts: $$escapes across attach modes $$modes(results in docs/threat-model.md); refused transports and clients: $$tls"; \
	grep -qE -- '--- FAIL|^FAIL' $(CHAOS_LOG) && status=1; \
	$(MAKE) --no-print-directory fuzz || status=1; \
	exit $$status
