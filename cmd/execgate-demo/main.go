// Command execgate-demo shows execgate's enforcement on this machine's real
// kernel: a policy in Protect mode, an allowed exec, a denied exec with its
// violation event, then the same policy switched to Monitor. It cleans up
// every cgroup and pin on exit, Ctrl-C included.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/execgate/execgate/nodeagent/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo.Run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
