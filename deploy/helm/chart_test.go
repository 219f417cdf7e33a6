// Package helm_test renders the execgate chart with the repository's pinned Helm
// (bin/helm, built by `make tools`) and checks the guards the chart must keep: it owns no
// code and must not need a cluster; applying the chart is test/e2e's job.
package helm_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/execgate/execgate/internal/testenv"
)

const (
	chart = "execgate"
	helm  = "../../bin/helm"
)

// render runs `helm template` with args and returns its output and error text.
func render(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if _, err := os.Stat(helm); err != nil {
		testenv.Need(t, "EXECGATE_REQUIRE_E2E", "bin/helm (run `make tools`)")
	}
	abs, _ := filepath.Abs(helm)
	out, err := exec.Command(abs, append([]string{"template", "execgate", chart, "--namespace", "execgate-system"}, args...)...).CombinedOutput()
	return string(out), err
}

// TestChartRefusesInsecureAgent: no value can make the agent serve gRPC without mTLS.
// The flag is refused however it is spelled and wherever it is put on the command line.
func TestChartRefusesInsecureAgent(t *testing.T) {
	refused := []struct {
		name string
		args []string
	}{
		{"the value", []string{"--set", "agent.insecureForTesting=true"}},
		{"the flag in extraArgs", []string{"--set", "agent.extraArgs={--gc-interval=1m,--insecure-for-testing}"}},
		{"the flag with a value", []string{"--set-json", `agent.extraArgs=["--insecure-for-testing=true"]`}},
		{"the flag with false", []string{"--set-json", `agent.extraArgs=["--insecure-for-testing=false"]`}},
		{"the flag with one dash", []string{"--set-json", `agent.extraArgs=["-insecure-for-testing"]`}},
		{"the flag in the command", []string{"--set-json", `agent.command=["execgate-agent","--insecure-for-testing"]`}},
		{"the flag in a shell wrapper", []string{"--set-json", `agent.command=["sh","-c","exec execgate-agent '--insecure-for-testing' \"$@\""]`}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, tc.args...)
			if err == nil {
				t.Fatalf("chart rendered with %v", tc.args)
			}
			if !strings.Contains(out, "the agent never serves without mTLS in a cluster") {
				t.Fatalf("refused, but not by the guard:\n%s", out)
			}
		})
	}

	allowed := []struct {
		name string
		args []string
	}{
		{"defaults", nil},
		{"harmless extra flags", []string{"--set-json", `agent.extraArgs=["--gc-interval=1m","--max-pods=100"]`}},
	}
	for _, tc := range allowed {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, tc.args...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, out)
			}
			for _, want := range []string{"--tls-request-dir=", "--client-ca-file=", "--client-name="} {
				if !strings.Contains(out, want) {
					t.Errorf("agent arguments lack %s", want)
				}
			}
			if strings.Contains(out, "insecure-for-testing") {
				t.Error("rendered manifests mention insecure-for-testing")
			}
		})
	}
}
