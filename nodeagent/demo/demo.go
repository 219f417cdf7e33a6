// Package demo is the story `make demo` tells: real cgroups, the real exec
// program, real denials. It owns nothing that outlives Run.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

const policy = enforcer.PolicyKey("demo/web")

// Run tells the story on w and removes everything it created before it
// returns, whatever happened.
func Run(ctx context.Context, w io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it loads a BPF program and creates cgroups")
	}
	root, err := cgroups.DiscoverRoot()
	if err != nil {
		return err
	}
	pin := fmt.Sprintf("/sys/fs/bpf/execgate-demo-%d", os.Getpid())
	cgPath := filepath.Join(root, fmt.Sprintf("execgate-demo-%d", os.Getpid()))
	say := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }

	e, err := enforcer.New(enforcer.Config{PinDir: pin})
	if err != nil {
		return err
	}
	defer func() {
		e.Close()
		if cerr := enforcer.Cleanup(pin); cerr != nil && err == nil {
			err = cerr
		}
		removeCgroup(cgPath)
		say("\ncleaned up: pins in %s and cgroup %s removed", pin, cgPath)
	}()
	say("execgate demo: exec program attached in %s mode (a denial looks like %s)", e.AttachMode(), e.AttachMode().Denies())

	if err := os.Mkdir(cgPath, 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	id, err := cgroups.ID(cgPath)
	if err != nil {
		return err
	}
	say("pod cgroup %s (id %d)", cgPath, id)

	allow := []string{"/usr/bin/echo", "/usr/bin/true"}
	if _, err := e.PutPolicy(enforcer.PolicyVersion{Key: policy, Version: 1, Mode: enforcer.ModeProtect,
		Containers: map[string]enforcer.Rules{"web": {Paths: allow}}}); err != nil {
		return err
	}
	if err := e.Bind(id, policy, "web"); err != nil {
		return err
	}
	say("\n[1] policy %s, mode Protect, allows %s", policy, strings.Join(allow, ", "))
	step(ctx, w, e, cgPath, "/usr/bin/echo", "hello from an allowed binary")
	step(ctx, w, e, cgPath, "/usr/bin/id")

	if _, err := e.PutPolicy(enforcer.PolicyVersion{Key: policy, Version: 2, Mode: enforcer.ModeMonitor,
		Containers: map[string]enforcer.Rules{"web": {Paths: allow}}}); err != nil {
		return err
	}
	say("\n[2] same policy switched to Monitor (version 2, swapped atomically)")
	step(ctx, w, e, cgPath, "/usr/bin/id")
	return ctx.Err()
}

// step runs one command in the cgroup and prints what happened and the
// event the kernel reported, if any.
func step(ctx context.Context, w io.Writer, e *enforcer.Enforcer, cgPath, name string, args ...string) {
	if ctx.Err() != nil {
		return
	}
	fd, err := unix.Open(cgPath, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(w, "    open cgroup: %v\n", err)
		return
	}
	defer unix.Close(fd)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(w, "  $ %s %s\n", name, strings.Join(args, " "))
	if len(out) > 0 {
		fmt.Fprintf(w, "    %s", out)
	}
	if err != nil {
		fmt.Fprintf(w, "    -> %v\n", err)
	} else {
		fmt.Fprintf(w, "    -> ran\n")
	}
	select {
	case ev := <-e.Events():
		fmt.Fprintf(w, "    event: action=%s mode=%s policy=%s container=%s exe=%s pid=%d ppid=%d uid=%d argv=%q parent=%s\n",
			ev.Action, ev.Mode, ev.Policy, ev.Container, ev.Path, ev.PID, ev.PPID, ev.UID, ev.Argv, ev.Parent)
	case <-time.After(500 * time.Millisecond):
		fmt.Fprintf(w, "    (no event: allowed by the policy)\n")
	case <-ctx.Done():
	}
}

func removeCgroup(p string) {
	_ = os.WriteFile(filepath.Join(p, "cgroup.kill"), []byte("1"), 0)
	for i := 0; i < 50; i++ {
		if err := os.Remove(p); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
