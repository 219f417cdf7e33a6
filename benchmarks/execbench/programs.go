package execbench

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

//go:embed csrc/exit0.c
var exit0Source []byte

//go:embed csrc/execloop.c
var execLoopSource []byte

// Programs are the executables a benchmark runs, at canonical paths (what
// the kernel reports for them, so they can be allowlisted as they are).
type Programs struct {
	Exit0    string // exits 0 at once: the timed exec
	ExecLoop string // execloop N PATH: the timer, forks and execs N times
	Denied   string // a copy of Exit0 at a path no policy allows
}

// Allowed lists what a benchmark policy must allow for ExecLoop to run Exit0.
func (p Programs) Allowed() []string { return []string{p.ExecLoop, p.Exit0} }

// PrebuiltEnv names a directory holding exit0 and execloop built earlier
// (a VM without a C compiler gets them from its host): BuildPrograms then
// copies them instead of compiling.
const PrebuiltEnv = "EXECGATE_BENCH_PROGRAMS"

// BuildPrograms compiles the programs into dir with the C compiler named by
// $CC, else cc, else clang (or copies them from $EXECGATE_BENCH_PROGRAMS).
// Both are static: no dynamic loader runs, and nothing outside dir is exec'd
// while timing.
func BuildPrograms(dir string) (Programs, error) {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return Programs{}, fmt.Errorf("resolve program directory: %w", err)
	}
	p := Programs{
		Exit0:    filepath.Join(dir, "exit0"),
		ExecLoop: filepath.Join(dir, "execloop"),
		Denied:   filepath.Join(dir, "exit0-not-allowed"),
	}
	if pre := os.Getenv(PrebuiltEnv); pre != "" {
		for _, out := range []string{p.Exit0, p.ExecLoop} {
			if err := copyProgram(filepath.Join(pre, filepath.Base(out)), out); err != nil {
				return Programs{}, fmt.Errorf("prebuilt programs ($%s): %w", PrebuiltEnv, err)
			}
		}
		return p, writeDenied(p)
	}
	cc, err := compiler()
	if err != nil {
		return Programs{}, err
	}
	builds := []struct {
		out, name string
		src       []byte
		flags     []string
	}{
		{p.Exit0, "exit0.c", exit0Source, []string{"-static", "-nostdlib", "-O2"}},
		{p.ExecLoop, "execloop.c", execLoopSource, []string{"-static", "-O2", "-Wall"}},
	}
	for _, b := range builds {
		src := filepath.Join(dir, b.name)
		if err := os.WriteFile(src, b.src, 0o644); err != nil {
			return Programs{}, fmt.Errorf("write %s: %w", b.name, err)
		}
		args := append(append([]string{}, b.flags...), "-o", b.out, src)
		var stderr bytes.Buffer
		cmd := exec.Command(cc, args...)
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return Programs{}, fmt.Errorf("compile %s with %s (static linking needs libc6-dev): %w: %s", b.name, cc, err, stderr.String())
		}
	}
	return p, writeDenied(p)
}

// writeDenied writes the copy of exit0 that no policy allows.
func writeDenied(p Programs) error {
	if err := copyProgram(p.Exit0, p.Denied); err != nil {
		return fmt.Errorf("write the not-allowed copy: %w", err)
	}
	return nil
}

func copyProgram(from, to string) error {
	raw, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, raw, 0o755)
}

func compiler() (string, error) {
	candidates := []string{"cc", "clang"}
	if env := os.Getenv("CC"); env != "" {
		candidates = []string{env}
	}
	for _, c := range candidates {
		if path, err := exec.LookPath(c); err == nil {
			return path, nil
		}
	}
	return "", errors.New("no C compiler (cc or clang, or $CC): `make deps` installs clang")
}
