package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/execgate/execgate/benchmarks/controlplane"
)

func main() {
	cfg := controlplane.DefaultConfig()
	cfg.Progress = os.Stderr
	b, err := controlplane.New(cfg)
	if err != nil {
		panic(err)
	}
	res, err := b.Run(context.Background())
	if err != nil {
		fmt.Println("ERR", err)
	}
	out, _ := json.MarshalIndent(res, "", " ")
	fmt.Println(string(out))
}
