package enforcer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/nodeagent/cgroups"
)

// The gate process's inherited descriptors (cmd.ExtraFiles in start).
const (
	gateFDProgram  = 3 // execgate_gate
	gateFDQuestion = 4 // gate_question map
	gateFDRecords  = 5 // pipe to the agent
	gateFDLifeline = 6 // pipe from the agent: EOF means exit
)

// As in bpf/lib/types.h.
const (
	eperm       = 1
	argvLen     = 512
	maxArgs     = 32
	gateBufSize = 64 << 10
)

// mountView is where the gate reads the node's mount table and reaches its
// tree. PID 1's are the host's when the agent shares the host's PID
// namespace (the DaemonSet's hostPID) while it runs in a mount namespace of
// its own; where PID 1's tree is out of reach, the gate's own namespace.
type mountView struct {
	mountinfo, root string
}

var mountViews = []mountView{{"/proc/1/mountinfo", "/proc/1/root"}, {"/proc/self/mountinfo", ""}}

func chooseMountView() mountView {
	for _, v := range mountViews[:len(mountViews)-1] {
		var st unix.Stat_t
		if unix.Stat(v.root+"/", &st) == nil {
			return v
		}
	}
	return mountViews[len(mountViews)-1]
}

// Filesystems no executable is run from; marking them only costs.
var unmarkedFS = map[string]bool{
	"proc": true, "sysfs": true, "cgroup": true, "cgroup2": true, "bpf": true, "tracefs": true,
	"debugfs": true, "securityfs": true, "configfs": true, "fusectl": true, "pstore": true,
	"mqueue": true, "devpts": true, "binfmt_misc": true, "nsfs": true, "efivarfs": true,
	"autofs": true, "rpc_pipefs": true, "hugetlbfs": true,
}

// gateProcess is the state of the gate process (runGateProcess).
type gateProcess struct {
	fan      int // fanotify group
	iter     int // iterator link of execgate_gate over this process's files
	question *ebpf.Map
	out      *os.File
	records  chan []byte   // to the agent, written by sendRecords; never waited for
	sent     chan struct{} // closed when sendRecords returns
	dropped  atomic.Uint64 // records dropped because the agent did not read them
	view     mountView
	marked   map[uint64]string // st_dev -> the mount point it was marked through
	events   []byte            // a batch of fanotify events, answered one by one
	answer   []byte            // the gate program's output for one of them
}

// runGateProcess is the gate's main: it returns the exit code.
func runGateProcess() int {
	out := os.NewFile(gateFDRecords, "records")
	g, err := newGateProcess(out)
	if err != nil {
		_ = writeGateRecord(out, gateFatal, []byte(err.Error()))
		return 1
	}
	err = g.serve()
	if err != nil {
		g.send(gateFatal, []byte(err.Error()))
	}
	g.finish()
	if err != nil {
		return 1
	}
	return 0
}

func newGateProcess(out *os.File) (*gateProcess, error) {
	prog, err := ebpf.NewProgramFromFD(gateFDProgram)
	if err != nil {
		return nil, fmt.Errorf("gate program: %w", err)
	}
	question, err := ebpf.NewMapFromFD(gateFDQuestion)
	if err != nil {
		return nil, fmt.Errorf("gate question map: %w", err)
	}
	g := &gateProcess{question: question, out: out, records: make(chan []byte, gateRecordQueue), sent: make(chan struct{}),
		view: chooseMountView(), marked: map[uint64]string{},
		events: make([]byte, gateBufSize), answer: make([]byte, gateBufSize)}
	go g.sendRecords()
	// The iterator walks the files of this process's main thread, which
	// shares the fd table every thread reads fanotify events into.
	if g.iter, err = attachTaskFileIter(prog.FD(), os.Getpid()); err != nil {
		return nil, err
	}
	g.fan, err = unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK,
		unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init (CONFIG_FANOTIFY_ACCESS_PERMISSIONS): %w", err)
	}
	if err := g.markFilesystems(); err != nil {
		return nil, err
	}
	return g, nil
}

// gateRecordQueue bounds the records waiting for the agent to read them.
const gateRecordQueue = 1024

// send queues a record for the agent. The gate must never wait for the agent
// while a task waits for the gate: a full queue (an agent that stopped reading)
// drops the record, counted and reported with the next heartbeat.
func (g *gateProcess) send(kind uint32, payload []byte) {
	select {
	case g.records <- encodeGateRecord(kind, payload):
	default:
		g.dropped.Add(1)
	}
}

// sendRecords writes queued records to the agent, until the pipe breaks or
// finish closes the queue.
func (g *gateProcess) sendRecords() {
	defer close(g.sent)
	for rec := range g.records {
		if _, err := g.out.Write(rec); err != nil {
			return // the agent is gone; the lifeline ends the gate
		}
	}
}

// finish hands the agent what is queued, for a second at most. The main
// loop, the only sender, has stopped.
func (g *gateProcess) finish() {
	close(g.records)
	select {
	case <-g.sent:
	case <-time.After(time.Second):
	}
}

// markFilesystems marks every filesystem of the node's mount table not
// marked yet (one mark covers a superblock, wherever it is mounted), through
// the node's root so that a mount point names the host's mount, not ours.
func (g *gateProcess) markFilesystems() error {
	mounts, err := cgroups.ReadMounts(g.view.mountinfo)
	if err != nil {
		return err
	}
	var failed []string
	for _, m := range mounts {
		if unmarkedFS[m.FSType] {
			continue
		}
		path := g.view.root + m.MountPoint
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			continue // hidden by a later mount, or gone
		}
		if _, ok := g.marked[st.Dev]; ok {
			continue
		}
		err := unix.FanotifyMark(g.fan, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_OPEN_EXEC_PERM,
			unix.AT_FDCWD, path)
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s (%s): %v", m.MountPoint, m.FSType, err))
			g.marked[st.Dev] = "" // do not retry on every mount change
			continue
		}
		g.marked[st.Dev] = m.MountPoint
	}
	if len(failed) > 0 {
		g.send(gateLog, []byte("not marked, exec_kill alone covers them: "+strings.Join(failed, "; ")))
	}
	return nil
}

func (g *gateProcess) markedSummary() string {
	var n int
	for _, mp := range g.marked {
		if mp != "" {
			n++
		}
	}
	return fmt.Sprintf("%d filesystems of %s", n, g.view.mountinfo)
}

// serve answers permission events until the agent closes the lifeline.
func (g *gateProcess) serve() error {
	mi, err := os.Open(g.view.mountinfo)
	if err != nil {
		return fmt.Errorf("watch mounts: %w", err)
	}
	defer mi.Close()
	g.send(gateReady, []byte(g.markedSummary()))
	beat := time.Now()
	fds := []unix.PollFd{
		{Fd: int32(g.fan), Events: unix.POLLIN},
		{Fd: gateFDLifeline, Events: unix.POLLIN},
		{Fd: int32(mi.Fd()), Events: unix.POLLPRI},
	}
	for {
		if time.Since(beat) >= gateHeartbeat {
			var dropped []byte
			if n := g.dropped.Swap(0); n > 0 {
				dropped = binary.LittleEndian.AppendUint64(nil, n)
			}
			g.send(gateAlive, dropped)
			beat = time.Now()
		}
		if _, err := unix.Poll(fds, int(gateHeartbeat/time.Millisecond)); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("poll: %w", err)
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			if err := g.answerEvents(); err != nil {
				return err
			}
		}
		if fds[1].Revents != 0 {
			return nil
		}
		if fds[2].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
			if err := g.markFilesystems(); err != nil {
				g.send(gateLog, []byte(err.Error()))
			}
		}
	}
}

// answerEvents answers every queued event. Each permission event is
// answered, whatever happens: a task waits for it.
func (g *gateProcess) answerEvents() error {
	const metaSize = int(unsafe.Sizeof(unix.FanotifyEventMetadata{}))
	for {
		n, err := unix.Read(g.fan, g.events)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read fanotify events: %w", err)
		}
		for off := 0; off+metaSize <= n; {
			var meta unix.FanotifyEventMetadata
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&meta)), metaSize), g.events[off:off+metaSize])
			if meta.Vers != unix.FANOTIFY_METADATA_VERSION || int(meta.Event_len) < metaSize {
				return fmt.Errorf("fanotify event of version %d, length %d: this gate speaks version %d",
					meta.Vers, meta.Event_len, unix.FANOTIFY_METADATA_VERSION)
			}
			if meta.Fd >= 0 {
				if meta.Mask&unix.FAN_OPEN_EXEC_PERM != 0 {
					resp := unix.FanotifyResponse{Fd: meta.Fd, Response: g.decide(int(meta.Fd), meta.Pid)}
					if _, err := unix.Write(g.fan, unsafe.Slice((*byte)(unsafe.Pointer(&resp)), unsafe.Sizeof(resp))); err != nil {
						g.send(gateLog, []byte(fmt.Sprintf("answer pid %d: %v", meta.Pid, err)))
					}
				}
				unix.Close(int(meta.Fd))
			}
			off += int(meta.Event_len)
		}
	}
}

// decide asks the kernel program about one exec. Anything but a denial is
// allowed: exec_kill decides again once the exec commits, so a gate error
// never lets through what exec_kill would stop.
func (g *gateProcess) decide(fd int, pid int32) uint32 {
	verdict, record, argv, err := g.ask(fd, pid)
	if err != nil {
		g.send(gateLog, []byte(fmt.Sprintf("pid %d: %v (allowed; exec_kill decides)", pid, err)))
		return unix.FAN_ALLOW
	}
	if verdict != -eperm {
		return unix.FAN_ALLOW
	}
	if record != nil {
		g.send(gateEvent, withArgv(record, pid, argv))
	}
	return unix.FAN_DENY
}

func (g *gateProcess) ask(fd int, pid int32) (int32, []byte, uint64, error) {
	q := bpf.ExecgateGateRequest{Fd: int32(fd), Pid: pid}
	if err := g.question.Put(uint32(0), &q); err != nil {
		return 0, nil, 0, fmt.Errorf("write gate question: %w", err)
	}
	it, err := openIter(g.iter)
	if err != nil {
		return 0, nil, 0, err
	}
	defer unix.Close(it)
	n := 0
	for n < len(g.answer) {
		m, err := unix.Read(it, g.answer[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, nil, 0, fmt.Errorf("run gate program: %w", err)
		}
		if m == 0 {
			break
		}
		n += m
	}
	var v bpf.ExecgateGateVerdict
	hdr := int(unsafe.Sizeof(v))
	if n < hdr {
		return 0, nil, 0, fmt.Errorf("gate program gave %d bytes, want a %d-byte verdict (fd %d not found?)", n, hdr, fd)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&v)), hdr), g.answer[:hdr])
	if v.Verdict == -3 {
		return 0, nil, 0, fmt.Errorf("no task %d", pid)
	}
	if int(v.EventLen) > n-hdr {
		return 0, nil, 0, fmt.Errorf("gate event of %d bytes, %d read", v.EventLen, n-hdr)
	}
	var record []byte
	if v.EventLen > 0 {
		record = bytes.Clone(g.answer[hdr : hdr+int(v.EventLen)])
	}
	return v.Verdict, record, v.Argv, nil
}

// withArgv fills in the argv of a gate event from the blocked task's memory
// (/proc/PID/mem; never /proc/PID/syscall, whose lock the exec holds).
func withArgv(record []byte, pid int32, argvPtr uint64) []byte {
	if len(record) < eventHeaderSize || argvPtr == 0 {
		return record
	}
	var h bpf.ExecgateEvent
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), eventHeaderSize), record[:eventHeaderSize])
	pathEnd := eventHeaderSize + int(h.PathLen)
	if pathEnd > len(record) {
		return record
	}
	args, argc, truncated, err := readArgv(pid, argvPtr)
	if err != nil {
		return record // ARGV_MISSING stays set
	}
	h.ArgvLen = uint16(len(args))
	h.Argc = argc
	h.Flags &^= uint16(bpf.ExecgatePathFlagsARGV_MISSING)
	if truncated {
		h.Flags |= uint16(bpf.ExecgatePathFlagsARGV_TRUNCATED)
	}
	out := make([]byte, 0, pathEnd+len(args))
	out = append(out, unsafe.Slice((*byte)(unsafe.Pointer(&h)), eventHeaderSize)...)
	out = append(out, record[eventHeaderSize:pathEnd]...)
	return append(out, args...)
}

// readArgv reads argv as the kernel program would: NUL-terminated strings,
// at most argvLen bytes and maxArgs arguments.
func readArgv(pid int32, argvPtr uint64) ([]byte, uint32, bool, error) {
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, 0, false, err
	}
	defer mem.Close()
	var (
		out       []byte
		argc      uint32
		truncated bool
		ptr       [8]byte
		str       = make([]byte, argvLen)
	)
	for i := 0; ; i++ {
		if _, err := mem.ReadAt(ptr[:], int64(argvPtr)+int64(8*i)); err != nil {
			return nil, 0, false, err
		}
		p := binary.NativeEndian.Uint64(ptr[:])
		if p == 0 {
			break
		}
		argc++
		if i == maxArgs || len(out) >= argvLen {
			truncated = true
			continue // keep counting argc
		}
		n, _ := mem.ReadAt(str, int64(p))
		s := str[:n]
		if j := bytes.IndexByte(s, 0); j >= 0 {
			s = s[:j]
		}
		out = append(out, s...)
		out = append(out, 0)
		if len(out) > argvLen {
			out, truncated = out[:argvLen], true
		}
		if argc > 1<<16 {
			break
		}
	}
	return out, argc, truncated, nil
}

// attachTaskFileIter links an iter/task_file program to one thread (tid).
// cilium/ebpf's AttachIter has no task filter, so this is the raw
// BPF_LINK_CREATE (bpf_iter_link_info.task, 6.1+).
func attachTaskFileIter(progFD, tid int) (int, error) {
	info := [4]uint32{uint32(tid)} // union bpf_iter_link_info { struct { __u32 tid, pid, pid_fd; } task; ... }
	attr := struct {
		ProgFD, TargetFD, AttachType, Flags uint32
		IterInfo                            uint64
		IterInfoLen                         uint32
		_                                   uint32
	}{ProgFD: uint32(progFD), AttachType: unix.BPF_TRACE_ITER, IterInfo: uint64(uintptr(unsafe.Pointer(&info))), IterInfoLen: uint32(unsafe.Sizeof(info))}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_LINK_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(&info)
	if errno != 0 {
		return -1, fmt.Errorf("link gate iterator to tid %d: %w", tid, errno)
	}
	unix.CloseOnExec(int(fd))
	return int(fd), nil
}

// openIter starts one run of an iterator link (BPF_ITER_CREATE).
func openIter(linkFD int) (int, error) {
	attr := struct{ LinkFD, Flags uint32 }{LinkFD: uint32(linkFD)}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_ITER_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return -1, fmt.Errorf("run gate iterator: %w", errno)
	}
	unix.CloseOnExec(int(fd))
	return int(fd), nil
}
