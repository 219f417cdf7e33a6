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

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/test/e2e/framework"
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

// renderObjects renders the chart with args and decodes every object, failing the test on
// either error.
func renderObjects(t *testing.T, args ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := render(t, args...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	objs, err := framework.DecodeManifests([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	return objs
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

// TestFailOpenBudgetCoversLookupAndHandshake (issue 14.7): the chart's check of the webhook's
// time budget adds every stage the controller may spend before it answers: the pod lookup,
// the push (the dial and mTLS handshake of a first push included) and the API server's own
// share of the call, and it tells the controller the bound (--answer-within). Before, only
// pushTimeout < timeoutSeconds was checked, and a duration the check could not parse
// (1m, 1.5s) passed unchecked: the first four refused cases rendered.
func TestFailOpenBudgetCoversLookupAndHandshake(t *testing.T) {
	refused := []struct {
		name string
		args []string
		want string
	}{
		{"push timeout that leaves no room for the lookup", []string{"--set", "controller.pushTimeout=1900ms"}, "= 2650ms exceeds webhook.timeoutSeconds (2s)"},
		// The schema refuses them first; the template's own check covers --skip-schema-validation.
		{"push timeout in minutes", []string{"--set", "controller.pushTimeout=1m"}, "'1m' does not match pattern '^[0-9]+(ms|s)$'"},
		{"push timeout with a fraction", []string{"--set", "controller.pushTimeout=1.5s"}, "'1.5s' does not match pattern '^[0-9]+(ms|s)$'"},
		{"push timeout in minutes, schema skipped", []string{"--skip-schema-validation", "--set", "controller.pushTimeout=1m"}, `controller.pushTimeout ("1m") must be a whole number of milliseconds or seconds`},
		{"no share left for the API server", []string{"--set", "webhook.callOverhead=0ms"}, "webhook.callOverhead (0ms) must be at least 100ms"},
		{"slow lookup", []string{"--set", "controller.lookupTimeout=1500ms"}, "= 2250ms exceeds webhook.timeoutSeconds (2s)"},
		{"push timeout equal to the webhook timeout", []string{"--set", "controller.pushTimeout=1s", "--set", "webhook.timeoutSeconds=1"}, "exceeds webhook.timeoutSeconds (1s)"},
	}
	for _, tc := range refused {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			out, err := render(t, tc.args...)
			if err == nil {
				t.Fatalf("chart rendered with %v", tc.args)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("refused, but not by the budget check (want %q):\n%s", tc.want, out)
			}
		})
	}

	allowed := []struct {
		name string
		args []string
		want []string // controller arguments
	}{
		{"defaults: 250ms + 250ms + 500ms of 2s", nil, []string{"--push-timeout=250ms", "--lookup-timeout=250ms", "--answer-within=1500ms"}},
		{"exactly the webhook timeout", []string{"--set", "controller.pushTimeout=1250ms"}, []string{"--push-timeout=1250ms", "--answer-within=1500ms"}},
		{"longer webhook timeout", []string{"--set", "webhook.timeoutSeconds=5", "--set", "controller.pushTimeout=2s", "--set", "webhook.callOverhead=1s"},
			[]string{"--push-timeout=2s", "--answer-within=4000ms", "timeoutSeconds: 5"}},
	}
	for _, tc := range allowed {
		t.Run("allowed: "+tc.name, func(t *testing.T) {
			out, err := render(t, tc.args...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, out)
			}
			for _, want := range tc.want {
				if !strings.Contains(out, want) {
					t.Errorf("rendered manifests lack %q", want)
				}
			}
		})
	}
}

// TestChartImageReference: the default is the name `make images` builds (repository and the
// chart's appVersion); a digest pins both workloads by digest; a malformed digest is refused.
func TestChartImageReference(t *testing.T) {
	images := func(out string) []string {
		var refs []string
		for _, line := range strings.Split(out, "\n") {
			if s := strings.TrimSpace(line); strings.HasPrefix(s, "image: ") {
				refs = append(refs, strings.Trim(strings.TrimPrefix(s, "image: "), `"`))
			}
		}
		return refs
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"default", nil, "execgate.io/execgate:0.1.0"},
		{"tag", []string{"--set", "image.tag=9.9.9"}, "execgate.io/execgate:9.9.9"},
		{"digest", []string{"--set", "image.repository=registry.example/execgate", "--set", "image.digest=" + digest}, "registry.example/execgate@" + digest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, tc.args...)
			if err != nil {
				t.Fatalf("render: %v\n%s", err, out)
			}
			refs := images(out)
			if len(refs) != 2 {
				t.Fatalf("want the controller's and the agent's image, got %v", refs)
			}
			for _, r := range refs {
				if r != tc.want {
					t.Errorf("image %q, want %q", r, tc.want)
				}
			}
		})
	}
	if out, err := render(t, "--set", "image.digest=sha256:short"); err == nil {
		t.Fatalf("a malformed digest rendered:\n%s", out)
	}
}
