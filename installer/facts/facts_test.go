package facts

import (
	"encoding/json"
	"testing"
)

func TestLookups(t *testing.T) {
	n := Node{
		Disks: []Disk{
			{Name: "vda", Path: "/dev/vda"},
			{Name: "vdb", Path: "/dev/vdb", Aliases: []string{"/dev/disk/by-id/virtio-castellan-data", "/dev/disk/by-path/pci-0000:00:08.0"}},
		},
		Devices: []Device{{Path: "/dev/disk/by-id/virtio-castellan-data"}},
	}
	tests := []struct {
		path string
		want string
	}{
		{"/dev/vdb", "vdb"},
		{"/dev/disk/by-id/virtio-castellan-data", "vdb"},
		{"/dev/disk/by-path/pci-0000:00:08.0", "vdb"},
		{"/dev/vda", "vda"},
		{"/dev/vdc", ""},
		{"vdb", ""}, // a kernel name is not a path
	}
	for _, tt := range tests {
		d, ok := n.Disk(tt.path)
		if ok != (tt.want != "") || d.Name != tt.want {
			t.Errorf("Disk(%q) = %q, %v; want %q", tt.path, d.Name, ok, tt.want)
		}
	}
	if d, ok := n.DiskNamed("vdb"); !ok || d.Path != "/dev/vdb" {
		t.Errorf("DiskNamed(vdb) = %+v %v", d, ok)
	}
	if _, ok := n.DiskNamed("/dev/vdb"); ok {
		t.Error("DiskNamed matched a path")
	}
	if _, ok := n.Device("/dev/disk/by-id/virtio-castellan-data"); !ok {
		t.Error("Device not found")
	}
}

// TestJSONRoundTrip: facts travel from the agent to the installer and into
// run records as JSON; what goes in comes back out.
func TestJSONRoundTrip(t *testing.T) {
	in := Node{Hostname: "n1", Kernel: "6.1.0", Arch: "amd64", CPUs: 2, MemoryB: 2 << 30, Systemd: true,
		Disks: []Disk{{Name: "vdb", Path: "/dev/vdb", SizeB: 2 << 30, Holders: []string{"dm-0"}, Mounted: true}},
		TPM:   TPM{Present: true, Device: "/dev/tpmrm0", Version: "2.0"}}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Node
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(out)
	if string(again) != string(data) {
		t.Errorf("round trip changed the facts:\n%s\n%s", data, again)
	}
	if Key.String() != "preflight.facts" || Key.Owner() != "preflight" {
		t.Errorf("key = %s (owner %s)", Key, Key.Owner())
	}
}
