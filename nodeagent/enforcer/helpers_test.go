package enforcer

import "os/exec"

func runHost(name string, args ...string) error { return exec.Command(name, args...).Run() }
