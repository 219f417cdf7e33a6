package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// stopGrace is how long a component gets to exit on SIGTERM before its group is killed.
const stopGrace = 5 * time.Second

// Process is one component (control plane, agent, controller) running in its own
// process group, with stdout and stderr appended to <dir>/<name>.log.
type Process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	exited  chan struct{} // closed by the waiter goroutine once cmd.Wait returns
	waitErr error         // written by the waiter goroutine before closing exited
}

// StartProcess starts binary with args in dir. The waiter goroutine it spawns exits
// when the process does; Stop guarantees that happens.
func StartProcess(name, binary, dir string, args []string) (*Process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own group, so stop reaches anything the component forks.
		Setpgid: true,
		// If the test binary dies without running cleanups (go test -timeout, SIGKILL),
		// the kernel kills the component instead of leaving it running.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, binary, err)
	}
	p := &Process{name: name, cmd: cmd, logPath: logPath, logFile: logFile, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// ExitedErr returns a non-nil error if the process has already exited.
func (p *Process) ExitedErr() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited early (%v); log tail:\n%s", p.name, p.waitErr, p.LogTail(40))
	default:
		return nil
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after stopGrace, and waits
// for the process to be reaped.
func (p *Process) Stop() error {
	defer p.logFile.Close()
	select {
	case <-p.exited:
		return nil
	default:
	}
	pgid := p.cmd.Process.Pid // Setpgid makes the pid the group id
	if err := syscall.Kill(-pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("terminate %s: %w", p.name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill %s: %w", p.name, err)
		}
		<-p.exited
	}
	// Children that ignored SIGTERM may outlive the leader; the group still exists then.
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s group: %w", p.name, err)
	}
	return nil
}

// LogTail returns up to the last n lines of the process's log.
func (p *Process) LogTail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", p.logPath, err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// Name is the component name the process was started as.
func (p *Process) Name() string { return p.name }

// PID is the process id (and process group id) of the component.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// LogPath is the file receiving the component's stdout and stderr.
func (p *Process) LogPath() string { return p.logPath }

// Kill sends SIGKILL to the process group and waits until the leader is reaped: a
// crash, with no chance to clean up. Stop is still safe to call afterwards.
func (p *Process) Kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}
