package enforcer

// The fanotify gate makes a Protect denial an EPERM from execve on kernels
// that refuse BPF trampolines (no lsm, no fmod_ret), where exec_kill alone can
// only kill the process once the exec has committed.
//
// A FAN_OPEN_EXEC_PERM mark on every filesystem holds each open-for-exec until
// the gate answers. The gate does not decide by itself: it asks the kernel
// program, running execgate_gate (an iterator over the gate's own file table)
// on the event's file and the blocked task. decide() is the same code over the
// same maps as exec_kill's. A denial is answered FAN_DENY, so execve fails with
// EPERM, and reported; anything else is allowed and left to exec_kill, which
// still decides every exec once it commits. So the gate only moves a denial
// earlier: if it dies, hangs up or misses a filesystem (memfd lives on none),
// exec_kill still kills what it would have denied.
//
// The gate is its own process, this binary re-executed (see init below): a Go
// process that starts children must not also answer permission events, since
// os/exec forks with vfork, a stop-the-world GC then waits for the vforking
// thread, which waits for its child's exec, which waits for the gate's answer.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/bpf"
)

// gateEnv makes a process that imports this package run as the gate.
const gateEnv = "EXECGATE_FANOTIFY_GATE"

func init() {
	if os.Getenv(gateEnv) == "1" {
		os.Exit(runGateProcess())
	}
}

// Records the gate process writes to its parent: a little-endian header
// {kind, length} and length bytes.
const (
	gateReady = 1 // payload: a summary of the marked filesystems
	gateEvent = 2 // payload: an event record, the ring buffer's format
	gateLog   = 3 // payload: a message for the agent's log
	gateFatal = 4 // payload: why the gate stops
	gateAlive = 5 // the heartbeat, at least every gateHeartbeat; payload: records dropped since the last (uint64), if any

	maxGateRecord = 1 << 16
)

// gateReadyTimeout bounds the wait for the first gate to mark filesystems.
const gateReadyTimeout = 10 * time.Second

// gateRestartDelay paces restarts of a gate that died; exec_kill enforces
// meanwhile.
const gateRestartDelay = time.Second

// A permission event has no timeout in the kernel: a gate that hangs would
// hang every exec of the node. The gate beats every gateHeartbeat; one silent
// for gateHungAfter is killed (the kernel then lets its pending opens through,
// exec_kill decides them) and restarted.
const (
	gateHeartbeat = time.Second
	gateHungAfter = 5 * time.Second
)

// minProcsWithGate is the fewest Go Ps this process keeps while a gate runs.
// Go forks with vfork: the forking thread keeps its P inside the kernel until
// the child has exec'd, and an exec waits for every fanotify gate on the node.
// With one P (a pod limited to one CPU gets GOMAXPROCS 1) a single fork
// waiting on a hung gate would stall every goroutine, the watchdog that kills
// the hung gate included: forever. This process forks only to start a gate,
// one at a time, so a second P keeps the watchdog running.
const minProcsWithGate = 2

// ensureProcsForGate raises GOMAXPROCS to minProcsWithGate if it is lower.
func ensureProcsForGate() (before int, raised bool) {
	before = runtime.GOMAXPROCS(0)
	if before >= minProcsWithGate {
		return before, false
	}
	runtime.GOMAXPROCS(minProcsWithGate)
	return before, true
}

// gateSupervisor runs the gate process and restarts it until stop.
type gateSupervisor struct {
	e        *Enforcer
	prog     *ebpf.Program
	question *ebpf.Map

	mu       sync.Mutex
	cmd      *exec.Cmd
	lifeline *os.File // write end: closing it tells the gate to exit
	stopping bool
	done     chan struct{}
	readers  sync.WaitGroup // readGate goroutines: done before Events closes
	lastSeen atomic.Int64   // unix nanoseconds of the gate's last record
}

// startGate starts the gate and waits until it has marked the filesystems.
func (e *Enforcer) startGate() error {
	g := &gateSupervisor{
		e:        e,
		prog:     e.coll.Programs[bpf.ExecgateProgExecgateGate],
		question: e.coll.Maps[bpf.ExecgateMapGateQuestion],
		done:     make(chan struct{}),
	}
	if g.prog == nil || g.question == nil {
		return errors.New("fanotify gate: program or question map not loaded")
	}
	if before, raised := ensureProcsForGate(); raised {
		e.log.Info("GOMAXPROCS raised so that a fork waiting on a hung gate cannot stall the gate's watchdog",
			zap.Int("from", before), zap.Int("to", minProcsWithGate))
	}
	ready := make(chan error, 1)
	if err := g.start(ready); err != nil {
		return err
	}
	select {
	case err := <-ready:
		if err != nil {
			g.stop()
			return err
		}
	case <-time.After(gateReadyTimeout):
		g.stop()
		return fmt.Errorf("fanotify gate: not ready within %s", gateReadyTimeout)
	}
	e.gate = g
	go g.supervise()
	go g.watchdog()
	return nil
}

// start launches one gate process; ready (if not nil) receives nil once it
// has marked the filesystems, or why it could not.
func (g *gateSupervisor) start(ready chan<- error) error {
	// The running image, even if its file was replaced or deleted since (an
	// upgrade in place): a path could name another binary by now.
	const self = "/proc/self/exe"
	progFD, err := dupFile(g.prog.FD(), "gate-program")
	if err != nil {
		return err
	}
	defer progFD.Close()
	mapFD, err := dupFile(g.question.FD(), "gate-question")
	if err != nil {
		return err
	}
	defer mapFD.Close()
	recR, recW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("fanotify gate: pipe: %w", err)
	}
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		recR.Close()
		recW.Close()
		return fmt.Errorf("fanotify gate: pipe: %w", err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), gateEnv+"=1")
	cmd.Stderr = os.Stderr
	// fd 3, 4, 5, 6 in the gate: see runGateProcess.
	cmd.ExtraFiles = []*os.File{progFD, mapFD, recW, lifeR}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		recR.Close()
		recW.Close()
		lifeR.Close()
		lifeW.Close()
		return fmt.Errorf("fanotify gate: start %s: %w", self, err)
	}
	recW.Close()
	lifeR.Close()
	g.mu.Lock()
	g.cmd, g.lifeline = cmd, lifeW
	g.mu.Unlock()
	g.lastSeen.Store(time.Now().UnixNano())
	g.readers.Add(1)
	go func() {
		defer g.readers.Done()
		g.e.readGate(recR, ready, &g.lastSeen)
	}()
	return nil
}

// watchdog kills a gate that stopped beating, until done closes; supervise
// then restarts it.
func (g *gateSupervisor) watchdog() {
	tick := time.NewTicker(gateHeartbeat)
	defer tick.Stop()
	for {
		select {
		case <-g.done:
			return
		case <-tick.C:
		}
		silent := time.Since(time.Unix(0, g.lastSeen.Load()))
		if silent < gateHungAfter {
			continue
		}
		g.mu.Lock()
		cmd := g.cmd
		g.mu.Unlock()
		g.e.log.Error("fanotify gate silent: killing it (its pending execs go to exec_kill)", zap.Duration("silent", silent))
		g.lastSeen.Store(time.Now().UnixNano()) // one kill per silence
		if cmd != nil && cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
	}
}

// supervise restarts the gate when it dies, until stop.
func (g *gateSupervisor) supervise() {
	defer close(g.done)
	for {
		g.mu.Lock()
		cmd := g.cmd
		g.mu.Unlock()
		err := cmd.Wait()
		g.mu.Lock()
		g.lifeline.Close()
		g.mu.Unlock()
		if g.isStopping() {
			return
		}
		g.e.log.Error("fanotify gate exited; exec_kill enforces until it is back (denials kill instead of EPERM)",
			zap.Error(err), zap.Duration("restartIn", gateRestartDelay))
		for {
			time.Sleep(gateRestartDelay)
			if g.isStopping() {
				return
			}
			err := g.start(nil)
			if err == nil {
				break
			}
			g.e.log.Error("restart fanotify gate", zap.Error(err))
		}
	}
}

func (g *gateSupervisor) isStopping() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stopping
}

// stop asks the gate to exit and waits; a gate that does not exit is killed.
// The kernel allows every pending exec when the fanotify group closes.
func (g *gateSupervisor) stop() {
	g.mu.Lock()
	g.stopping = true
	cmd, lifeline := g.cmd, g.lifeline
	g.mu.Unlock()
	if lifeline != nil {
		lifeline.Close()
	}
	defer g.readers.Wait()
	if g.e.gate != g { // never supervised: wait here
		if cmd != nil {
			waitOrKill(cmd)
		}
		return
	}
	select {
	case <-g.done:
	case <-time.After(5 * time.Second):
		if cmd != nil && cmd.Process != nil {
			_ = cmd.Process.Kill() // an error only says it has exited already
		}
		<-g.done
	}
}

func waitOrKill(cmd *exec.Cmd) {
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill() // an error only says it has exited already
		<-done
	}
}

// readGate turns the gate's records into log lines and events.
func (e *Enforcer) readGate(r *os.File, ready chan<- error, lastSeen *atomic.Int64) {
	defer r.Close()
	signal := func(err error) {
		if ready != nil {
			ready <- err
			ready = nil
		}
	}
	defer signal(errors.New("fanotify gate exited before it was ready"))
	for {
		kind, payload, err := readGateRecord(r)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				e.log.Error("read fanotify gate", zap.Error(err))
			}
			return
		}
		lastSeen.Store(time.Now().UnixNano())
		switch kind {
		case gateAlive:
			if len(payload) == 8 {
				n := binary.LittleEndian.Uint64(payload)
				atomic.AddUint64(&e.userDrops, n)
				e.log.Warn("fanotify gate dropped records the agent did not read in time", zap.Uint64("dropped", n))
			}
		case gateReady:
			e.log.Info("fanotify gate ready", zap.String("marked", string(payload)))
			signal(nil)
		case gateEvent:
			raw, err := DecodeEvent(payload)
			if err != nil {
				e.log.Error("decode fanotify gate event", zap.Error(err))
				continue
			}
			e.deliver(raw)
		case gateLog:
			e.log.Warn("fanotify gate", zap.String("message", string(payload)))
		case gateFatal:
			e.log.Error("fanotify gate stops", zap.String("reason", string(payload)))
			signal(fmt.Errorf("fanotify gate: %s", payload))
		default:
			e.log.Error("fanotify gate: unknown record", zap.Uint32("kind", kind))
		}
	}
}

func readGateRecord(r io.Reader) (uint32, []byte, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	kind, n := binary.LittleEndian.Uint32(hdr[:4]), binary.LittleEndian.Uint32(hdr[4:])
	if n > maxGateRecord {
		return 0, nil, fmt.Errorf("gate record of %d bytes is larger than %d", n, maxGateRecord)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("gate record: %w", err)
	}
	return kind, payload, nil
}

// writeGateRecord writes one record; only for the gate's last words (its
// answers go through gateProcess.send, which never blocks).
func writeGateRecord(w io.Writer, kind uint32, payload []byte) error {
	_, err := w.Write(encodeGateRecord(kind, payload))
	return err
}

func encodeGateRecord(kind uint32, payload []byte) []byte {
	if len(payload) > maxGateRecord {
		payload = payload[:maxGateRecord]
	}
	buf := make([]byte, 8+len(payload))
	binary.LittleEndian.PutUint32(buf[:4], kind)
	binary.LittleEndian.PutUint32(buf[4:8], uint32(len(payload)))
	copy(buf[8:], payload)
	return buf
}

func dupFile(fd int, name string) (*os.File, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fanotify gate: dup %s: %w", name, err)
	}
	return os.NewFile(uintptr(d), name), nil
}

// GateAvailable reports whether this kernel can run the fanotify gate:
// permission events, and 6.8+, where execve opens its file before
// bprm_execve() sets in_execve ("execve: open the executable file before
// doing anything else"): before that the gate cannot tell the file execve
// names from an interpreter, allows both, and only adds its cost.
func GateAvailable() error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return fmt.Errorf("kernel release %q: %w", release, err)
	}
	if major < 6 || major == 6 && minor < 8 {
		return fmt.Errorf("kernel %s: the fanotify gate needs 6.8+ (execve opens its file before setting in_execve)", release)
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC, unix.O_RDONLY)
	if err != nil {
		return fmt.Errorf("fanotify permission events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS): %w", err)
	}
	unix.Close(fd)
	return nil
}
