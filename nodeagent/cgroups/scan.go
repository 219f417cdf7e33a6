package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// PodCgroup is a pod's cgroup directory and its cgroup id.
type PodCgroup struct {
	UID      string
	QoS      QoS
	Path     string
	CgroupID uint64
}

// ContainerCgroup is a container's cgroup directory and its cgroup id.
type ContainerCgroup struct {
	PodUID      string
	Runtime     Runtime
	ContainerID string
	Path        string
	CgroupID    uint64
}

// Snapshot is every pod and container cgroup found by Scan.
type Snapshot struct {
	Pods       []PodCgroup
	Containers []ContainerCgroup
}

// Scan lists every pod cgroup and container cgroup under the layout, so an agent that
// starts on a busy node can adopt pods already running. Directories that vanish while
// they are read are left out; a missing QoS directory means no pods of that class.
func (l Layout) Scan() (Snapshot, error) {
	var s Snapshot
	for _, q := range qosClasses {
		dir := l.QoSPath(q)
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return Snapshot{}, fmt.Errorf("scan pod cgroups in %q: %w", dir, err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			pod, ok, err := l.readPod(filepath.Join(dir, e.Name()), q)
			if err != nil {
				return Snapshot{}, err
			}
			if !ok {
				continue
			}
			s.Pods = append(s.Pods, pod)
			cs, err := l.readContainers(pod)
			if err != nil {
				return Snapshot{}, err
			}
			s.Containers = append(s.Containers, cs...)
		}
	}
	return s, nil
}

// readPod returns the pod cgroup at path if it is one of class q and still exists.
func (l Layout) readPod(path string, q QoS) (PodCgroup, bool, error) {
	uid, qos, ok := l.ParsePodCgroup(path)
	// With cgroupfs, "burstable" sits in kubepods next to Guaranteed pods; the class
	// check also keeps a pod from being reported twice.
	if !ok || qos != q {
		return PodCgroup{}, false, nil
	}
	id, err := ID(path)
	if errors.Is(err, os.ErrNotExist) {
		return PodCgroup{}, false, nil
	}
	if err != nil {
		return PodCgroup{}, false, fmt.Errorf("scan pod %s: %w", uid, err)
	}
	return PodCgroup{UID: uid, QoS: qos, Path: path, CgroupID: id}, true, nil
}

// readContainers lists the container cgroups of pod; a pod removed meanwhile has none.
func (l Layout) readContainers(pod PodCgroup) ([]ContainerCgroup, error) {
	entries, err := os.ReadDir(pod.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("scan containers of pod %s: %w", pod.UID, err)
	}
	var out []ContainerCgroup
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		rt, cid, ok := l.ParseContainerCgroup(e.Name())
		if !ok {
			continue
		}
		p := filepath.Join(pod.Path, e.Name())
		id, err := ID(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("scan container %s of pod %s: %w", cid, pod.UID, err)
		}
		out = append(out, ContainerCgroup{PodUID: pod.UID, Runtime: rt, ContainerID: cid, Path: p, CgroupID: id})
	}
	return out, nil
}
