// Command execgate-demo is `make demo`: a real control plane built from source, the
// chart, the controller and its pods/binding webhook, one node's agent enforcing in
// this machine's kernel, and a pod whose execs are allowed, denied, then reported.
// It cleans up every process, cgroup and pin on exit, Ctrl-C included.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/execgate/execgate/test/e2e/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo.Run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		stop()
		os.Exit(1)
	}
}
