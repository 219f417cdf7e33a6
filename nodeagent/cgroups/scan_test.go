package cgroups

import (
	"path/filepath"
	"slices"
	"testing"
)

func TestScanRoot(t *testing.T) {
	for _, driver := range []Driver{DriverSystemd, DriverCgroupfs} {
		t.Run(string(driver), func(t *testing.T) {
			_, dir := testTree(t)
			l := mustLayout(t, dir, driver, "/")
			rt := RuntimeContainerd
			if driver == DriverCgroupfs {
				rt = RuntimeUnspecified
			}
			pods := []struct {
				uid  string
				qos  QoS
				cids []string
			}{
				{uidA, QoSGuaranteed, []string{cidA, cidB}},
				{uidB, QoSBurstable, []string{cidC}},
				{uidC, QoSBestEffort, nil},
			}
			for _, p := range pods {
				mkdirAll(t, l.PodCgroupPath(p.uid, p.qos))
				for _, c := range p.cids {
					mkdirAll(t, l.ContainerCgroupPath(p.uid, p.qos, rt, c))
				}
			}
			// Things that are not pods or containers must be ignored.
			mkdirAll(t,
				filepath.Join(l.KubepodsPath(), "not-a-pod"),
				filepath.Join(l.PodCgroupPath(uidA, QoSGuaranteed), "not-a-container"),
				filepath.Join(dir, "system.slice"),
			)

			snap, err := l.Scan()
			if err != nil {
				t.Fatal(err)
			}
			var gotPods, wantPods []PodCgroup
			gotPods = snap.Pods
			var wantContainers []ContainerCgroup
			for _, p := range pods {
				path := l.PodCgroupPath(p.uid, p.qos)
				wantPods = append(wantPods, PodCgroup{UID: p.uid, QoS: p.qos, Path: path, CgroupID: mustID(t, path)})
				for _, c := range p.cids {
					cp := l.ContainerCgroupPath(p.uid, p.qos, rt, c)
					wantContainers = append(wantContainers, ContainerCgroup{PodUID: p.uid, Runtime: rt, ContainerID: c, Path: cp, CgroupID: mustID(t, cp)})
				}
			}
			if !slices.Equal(gotPods, wantPods) {
				t.Errorf("Scan pods:\n got %+v\nwant %+v", gotPods, wantPods)
			}
			if !slices.Equal(snap.Containers, wantContainers) {
				t.Errorf("Scan containers:\n got %+v\nwant %+v", snap.Containers, wantContainers)
			}
		})
	}
}

func TestScanEmptyRoot(t *testing.T) {
	_, dir := testTree(t)
	snap, err := mustLayout(t, dir, DriverSystemd, "/").Scan()
	if err != nil || len(snap.Pods) != 0 || len(snap.Containers) != 0 {
		t.Fatalf("Scan(empty) = %+v, %v", snap, err)
	}
}
