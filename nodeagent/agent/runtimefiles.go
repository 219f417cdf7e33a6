package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/execgate/execgate/nodeagent/enforcer"
)

// DefaultRuntimeExecutables are the OCI runtimes looked for on the host.
var DefaultRuntimeExecutables = []string{"runc", "crun"}

// DefaultSandboxPaths is what the pause image runs (the sandbox image of
// the kubelet and containerd).
var DefaultSandboxPaths = []string{"/pause"}

// runtimeDirs are where a bare runtime name is looked for, in the host's root.
var runtimeDirs = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// DefaultHostRoot is the host's root seen from an agent with hostPID.
const DefaultHostRoot = "/proc/1/root"

// RuntimeFiles keeps the kernel's list of the node's container runtime
// executables current (see enforcer/runtime.go: their re-exec of themselves
// in a container's cgroup is exempt). It looks them up through the host's
// root, so an agent in a pod needs no host mount, and again every interval
// (the GC round): a runtime upgraded in place is a new inode, named within a
// round. An inode that disappeared stays listed one more round (an earlier
// agent's pinned list counts as the round before), for a runtime process of
// the old file still starting a container.
type RuntimeFiles struct {
	Enforcer *enforcer.Enforcer
	// Root is the host's root directory ("/" on the host itself).
	Root string
	// Names are bare names looked for in the usual directories, or
	// absolute paths (a runtime the containerd config names by path).
	Names []string
	Log   *zap.Logger

	previous []enforcer.FileID
	found    []string
}

// Sync looks the runtimes up and writes what it found to the kernel. Finding
// none is not an error (a node may run none of them), but it is said loudly:
// under Protect runc could then start no container.
func (r *RuntimeFiles) Sync() error {
	var (
		ids   []enforcer.FileID
		found []string
		errs  []error
	)
	for _, name := range r.Names {
		for _, p := range candidates(name) {
			named, err := r.lookup(p)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, id := range named {
				if !slices.Contains(ids, id) {
					ids = append(ids, id)
					found = append(found, p+" ("+id.String()+")")
				}
			}
		}
	}
	if r.previous == nil {
		// A new agent: what an earlier one listed (pinned) is the previous round.
		if pinned, err := r.Enforcer.RuntimeFiles(); err == nil {
			r.previous = pinned
		}
	}
	all := slices.Clone(ids)
	for _, id := range r.previous {
		if !slices.Contains(all, id) && len(all) < enforcer.MaxRuntimeFiles {
			all = append(all, id) // the current ones first: a full map drops old inodes
		}
	}
	if err := r.Enforcer.SetRuntimeFiles(all); err != nil {
		return err
	}
	if !slices.Equal(found, r.found) {
		if len(found) == 0 {
			r.Log.Warn("no container runtime executable found: under Protect runc cannot start containers (set --runtime-executables)",
				zap.Strings("looked_for", r.Names), zap.String("host_root", r.Root))
		} else {
			r.Log.Info("container runtime executables", zap.Strings("files", found), zap.String("host_root", r.Root))
		}
	}
	r.previous, r.found = ids, found
	return errors.Join(errs...)
}

// Run syncs every interval until ctx ends; a failed sync is logged and
// retried, the kernel keeps the last list.
func (r *RuntimeFiles) Run(ctx context.Context, interval time.Duration) {
	every(ctx, interval, func() {
		if err := r.Sync(); err != nil {
			r.Log.Warn("look up container runtime executables", zap.Error(err))
		}
	})
}

func candidates(name string) []string {
	if filepath.IsAbs(name) {
		return []string{filepath.Clean(name)}
	}
	out := make([]string, 0, len(runtimeDirs))
	for _, d := range runtimeDirs {
		out = append(out, filepath.Join(d, name))
	}
	return out
}

// lookup resolves host path p inside Root (an absolute symlink target is the
// host's, not the agent's) and names its file as the kernel does.
func (r *RuntimeFiles) lookup(p string) ([]enforcer.FileID, error) {
	resolved, err := resolveIn(r.Root, p)
	if err != nil {
		return nil, err
	}
	ids, err := enforcer.KernelFileIDs(filepath.Join(r.Root, resolved))
	if err != nil {
		return nil, fmt.Errorf("runtime executable %s: %w", p, err)
	}
	return ids, nil
}

// resolveIn follows the symlinks of host path p with root as "/", and
// returns the host path of the file it names.
func resolveIn(root, p string) (string, error) {
	const maxLinks = 32
	todo := strings.Split(strings.Trim(filepath.Clean(p), "/"), "/")
	cur := "/"
	links := 0
	for len(todo) > 0 {
		part := todo[0]
		todo = todo[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, part)
		st, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if st.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("%s: too many symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		todo = append(strings.Split(strings.Trim(target, "/"), "/"), todo...)
	}
	return cur, nil
}

// HostRoot is DefaultHostRoot when the agent can read it, else "/" (an agent
// on the host, or without hostPID: then only its own root is visible).
func HostRoot(log *zap.Logger) string {
	if _, err := os.Stat(filepath.Join(DefaultHostRoot, "usr")); err == nil {
		return DefaultHostRoot
	} else if !errors.Is(err, fs.ErrNotExist) {
		log.Warn("the host's root through PID 1 cannot be read: looking for the container runtime in the agent's own", zap.Error(err))
	}
	return "/"
}
