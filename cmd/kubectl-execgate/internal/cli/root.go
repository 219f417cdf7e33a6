package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// Exit codes of the plugin.
const (
	ExitOK      = 0
	ExitFailure = 1 // the command ran and failed: API error, missing object
	ExitUsage   = 2 // bad arguments or flags
)

// usageError is a mistake in the command line; Main prints it with a pointer to --help.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// failure marks an error returned by a command's body, after its arguments were
// accepted. Every other error cobra returns is about the command line.
type failure struct{ err error }

func (e failure) Error() string { return e.err.Error() }
func (e failure) Unwrap() error { return e.err }

// options are the global flags and what every command shares.
type options struct {
	kubeconfig  string
	kubeContext string
	namespace   string
	output      string

	stdout, stderr io.Writer
	now            func() time.Time
}

// Main runs the plugin with args (without the program name) and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// Nothing the plugin calls should log through controller-runtime; if something does,
	// it must not print controller-runtime's "SetLogger was never called" stack.
	ctrllog.SetLogger(logr.Discard())
	return run(ctx, args, &options{stdout: stdout, stderr: stderr, now: time.Now})
}

func run(ctx context.Context, args []string, o *options) int {
	root := newRootCommand(o)
	root.SetArgs(args)
	root.SetOut(o.stdout)
	root.SetErr(o.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	if f := (failure{}); errors.As(err, &f) && !errors.As(err, new(usageError)) {
		fmt.Fprintf(o.stderr, "error: %v\n", f.err)
		return ExitFailure
	}
	if cmd == nil {
		cmd = root
	}
	fmt.Fprintf(o.stderr, "error: %v\nSee '%s --help' for usage.\n", err, cmd.CommandPath())
	return ExitUsage
}

func newRootCommand(o *options) *cobra.Command {
	root := &cobra.Command{
		Use:   "kubectl-execgate",
		Short: "Inspect and drive execgate, the Kubernetes process allowlist enforcer",
		Long: `Inspect and drive execgate: what each node enforces, recent violations, the
proposals Learn mode recorded, their promotion into policies, and why a pod is or
is not protected. Everything goes through the Kubernetes API server.`,
		Annotations:       map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl execgate"},
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRunE: func(*cobra.Command, []string) error {
			switch o.output {
			case "", "json", "yaml":
				return nil
			}
			return usagef("--output %q is not supported; use json or yaml, or leave it out for a table", o.output)
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	f := root.PersistentFlags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.kubeContext, "context", "", "the kubeconfig context to use")
	f.StringVarP(&o.namespace, "namespace", "n", "", "the namespace (default: the context's namespace)")
	f.StringVarP(&o.output, "output", "o", "", "output format: json or yaml (default: a table)")
	root.AddCommand(newStatusCommand(o), newEventsCommand(o), newProposalsCommand(o), newPromoteCommand(o), newExplainCommand(o))
	return root
}

// runE adapts a command body: errors it returns are failures unless they say otherwise.
func runE(body func(ctx context.Context, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := body(cmd.Context(), args)
		if err == nil || errors.As(err, new(usageError)) {
			return err
		}
		return failure{err}
	}
}

// Argument count checks that return usage errors naming what is missing.

func exactArg(what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		switch {
		case len(args) == 0:
			return usagef("missing the %s", what)
		case len(args) > 1:
			return usagef("expected one %s, got %d arguments: %s", what, len(args), strings.Join(args, " "))
		}
		if args[0] == "" {
			return usagef("the %s must not be empty", what)
		}
		return nil
	}
}

func maxArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) > n {
			return usagef("expected at most %d %s, got %d arguments: %s", n, what, len(args), strings.Join(args, " "))
		}
		return nil
	}
}

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected arguments: %s", strings.Join(args, " "))
	}
	return nil
}
