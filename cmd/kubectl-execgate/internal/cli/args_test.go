package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runPlugin runs the plugin in-process and returns its output and exit code.
func runPlugin(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	var out, errOut bytes.Buffer
	code = run(ctx, args, &options{stdout: &out, stderr: &errOut, now: time.Now})
	return out.String(), errOut.String(), code
}

// TestArgumentErrors needs no cluster: every case fails before the plugin connects.
func TestArgumentErrors(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"unknown command", []string{"bogus"}, `unknown command "bogus"`},
		{"unknown global flag", []string{"--bogus", "status"}, "unknown flag: --bogus"},
		{"unknown command flag", []string{"status", "--pod", "x"}, "unknown flag: --pod"},
		{"flag without its value", []string{"status", "--kubeconfig"}, "flag needs an argument: --kubeconfig"},
		{"output format", []string{"status", "-o", "xml"}, `--output "xml" is not supported`},
		{"output wide", []string{"proposals", "-o", "wide"}, `--output "wide" is not supported`},

		{"events with an argument", []string{"events", "web-1"}, "unexpected arguments: web-1"},
		{"events action", []string{"events", "--action", "kill"}, `--action "kill" is not an action; use denied or reported`},
		{"events action in capitals", []string{"events", "--action", "Denied"}, `--action "Denied" is not an action`},
		{"events pod name", []string{"events", "--pod", "Web_1"}, `--pod "Web_1" is not a pod name`},
		{"events policy with namespace", []string{"events", "--policy", "shop/web"}, `--policy "shop/web" is not a policy name`},
		{"events watch flag value", []string{"events", "--watch=maybe"}, `invalid argument "maybe"`},

		{"proposals with two names", []string{"proposals", "a", "b"}, "expected at most 1 proposal name, got 2 arguments: a b"},
		{"proposal name and all namespaces", []string{"proposals", "a", "-A"}, "exclude each other"},

		{"promote without proposal", []string{"promote", "--mode", "protect"}, "missing the proposal name"},
		{"promote two proposals", []string{"promote", "a", "b", "--mode", "protect"}, "expected one proposal name, got 2 arguments"},
		{"promote empty proposal", []string{"promote", "", "--mode", "protect"}, "the proposal name must not be empty"},
		{"promote without mode", []string{"promote", "web"}, "--mode is required: monitor (report violations) or protect (deny them)"},
		{"promote to learn", []string{"promote", "web", "--mode", "learn"}, "promote it to monitor or protect"},
		{"promote to unknown mode", []string{"promote", "web", "--mode", "enforce"}, `--mode "enforce" is not a mode; use monitor or protect`},
		{"promote bad policy name", []string{"promote", "web", "--mode", "protect", "--policy-name", "Web_Policy"}, `--policy-name "Web_Policy" is not a valid object name`},
		{"promote long policy name", []string{"promote", "web", "--mode", "protect", "--policy-name", long}, "is 64 characters long"},

		{"explain without pod", []string{"explain"}, "missing the pod name"},
		{"explain two pods", []string{"explain", "a", "b"}, "expected one pod name, got 2 arguments: a b"},
		{"explain bad pod name", []string{"explain", "../etc"}, `"../etc" is not a pod name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := runPlugin(context.Background(), tt.args...)
			if code != ExitUsage {
				t.Errorf("exit code %d, want %d (usage error); stderr:\n%s", code, ExitUsage, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr does not say %q:\n%s", tt.want, stderr)
			}
			if !strings.HasPrefix(stderr, "error: ") || !strings.Contains(stderr, "--help' for usage.") {
				t.Errorf("stderr is not one error line and a pointer to --help:\n%s", stderr)
			}
			if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") || stdout != "" {
				t.Errorf("unexpected output: stdout %q, stderr %q", stdout, stderr)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{nil, {"--help"}, {"help", "promote"}, {"events", "-h"}} {
		stdout, stderr, code := runPlugin(context.Background(), args...)
		if code != ExitOK || !strings.Contains(stdout, "kubectl execgate") || stderr != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
}

// A kubeconfig that cannot be loaded is a failure of the command, not of its arguments.
func TestMissingKubeconfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, stderr, code := runPlugin(context.Background(), "--kubeconfig", missing, "status")
	if code != ExitFailure || !strings.HasPrefix(stderr, "error: load kubeconfig:") || strings.Contains(stderr, "--help") {
		t.Errorf("exit %d, stderr %q; want exit %d and a load kubeconfig error", code, stderr, ExitFailure)
	}
}

func TestBytesIEC(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 1536: "1.5KiB", 1_153_433: "1.1MiB", 5 << 30: "5.0GiB"} {
		if got := bytesIEC(n); got != want {
			t.Errorf("bytesIEC(%d) = %q, want %q", n, got, want)
		}
	}
}
