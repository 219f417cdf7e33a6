// Command kubectl-execgate is execgate's kubectl plugin (`kubectl execgate ...`): what each
// node enforces, recent violations, Learn-mode proposals and their promotion, and why a
// pod is or is not protected. It talks only to the Kubernetes API server.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/execgate/execgate/cmd/kubectl-execgate/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
