package diskcrypt

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/engine/enginetest"
	"castellan/installer/facts"
	"castellan/installer/profile"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// factsPhase is a FAKE preflight that publishes fixed facts (fixtures).
type factsPhase struct{ f facts.Node }

func (factsPhase) Name() string                                          { return "preflight" }
func (factsPhase) Ops() []agent.Handler                                  { return nil }
func (factsPhase) Apply(context.Context, *engine.Run, engine.Plan) error { return nil }
func (p factsPhase) Plan(_ context.Context, v *engine.View) (engine.Plan, error) {
	for _, n := range v.Nodes() {
		if err := engine.Publish(v, facts.Key, n.Name, p.f); err != nil {
			return engine.Plan{}, err
		}
	}
	return engine.Plan{}, nil
}

const (
	tUUID   = "0f1e2d3c-4b5a-4697-8877-665544332211"
	tFSUUID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
	tMP     = "/var/lib/castellan/data/vdb"
)

// blankFacts are preflight's facts of a node whose /dev/vdb is blank.
func blankFacts() facts.Node {
	return facts.Node{
		Systemd: true,
		TPM:     facts.TPM{Present: true, Device: "/dev/tpmrm0", Version: "2.0"},
		Disks: []facts.Disk{
			{Name: "vda", Path: "/dev/vda", SizeB: 20 << 30, Mounted: true, Mounts: []string{"/"}},
			{Name: "vdb", Path: "/dev/vdb", SizeB: 2 << 30},
		},
		Devices: []facts.Device{{Path: "/dev/vdb", Resolved: "/dev/vdb", Kind: facts.DeviceDisk, Disk: "vdb"}},
	}
}

func blankObs() DiskState {
	return DiskState{Device: "/dev/vdb", Kernel: "vdb", SizeB: 2 << 30, Content: "c0ffee", MountPoint: MountPointState{}}
}

// ownToken is castellan's token of server-1 of cluster lab.
func ownToken() Token {
	return Token{Version: 1, Cluster: "lab", Node: "server-1", Device: "/dev/vdb",
		Filesystem: Filesystem{Type: "ext4", UUID: tFSUUID}, Recovery: Slot{Keyslot: 0, Generation: 1}}
}

// ownHeader is the header of castellan's finished disk.
func ownHeader(tok Token) *Header {
	return &Header{Primary: CopyOK, Secondary: CopyOK, UUID: tUUID, Label: "castellan", HeaderSize: MetadataSize,
		DataOffset: HeaderAreaLen, SectorSize: 4096,
		Keyslots: []Keyslot{{ID: 0, Type: "luks2", KDF: "argon2id", Salt: "s0"}, {ID: 1, Type: "luks2", KDF: "pbkdf2", Salt: "s1"}},
		Tokens: []TokenRef{
			{ID: 0, Type: TokenType, Castellan: &tok},
			{ID: 1, Type: TPM2TokenType, Keyslots: []int{1}, TPM2: &TPM2Token{PCRs: []int{7}, PCRBank: "sha256"}},
		}}
}

// doneObs is castellan's disk with every step done: open, mounted, the TPM
// opening it.
func doneObs() DiskState {
	o := blankObs()
	o.Header = ownHeader(ownToken())
	o.HeaderArea = "area1"
	o.Mapping = &Mapping{Name: MappingName(tUUID), Kernel: "dm-0", FilesystemUUID: tFSUUID, Mounts: []string{tMP}}
	o.Crypttab = TabState{Ours: []string{CrypttabLine(tUUID)}}
	o.Fstab = TabState{Ours: []string{FstabLine(tUUID, tMP, "ext4")}}
	o.MountPoint = MountPointState{Exists: true, Mounted: true, Source: "dm-0"}
	o.TPM = TPMProbe{Result: TPMOpens}
	return o
}

// doneFacts are preflight's facts of that disk: LUKS2 with castellan's
// token, held by its mapping.
func doneFacts() facts.Node {
	f := blankFacts()
	d := &f.Disks[1]
	d.Signature = "luks2"
	d.Signatures = []facts.Signature{{Type: "luks2", Version: "2", UUID: tUUID, LUKS: &facts.LUKS{Version: 2, UUID: tUUID, ChecksumOK: true, Keyslots: 2, TokenTypes: []string{"castellan", "systemd-tpm2"}, Castellan: true}}}
	d.Holders = []string{"dm-0"}
	d.Busy = true
	return f
}

// doneStore holds the secrets and record of the finished disk.
func doneStore() *enginetest.MemStore {
	s := enginetest.NewMemStore()
	s.Secrets[Name+"/"+recoverySecret("server-1", tUUID, 1)] = []byte("cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv")
	s.Secrets[Name+"/"+headerSecret("server-1", tUUID)] = []byte("area")
	rec, _ := json.Marshal(Record{Disks: []RecordDisk{{Device: "/dev/vdb", UUID: tUUID, MountPoint: tMP, Generation: 1, PCRs: []int{7}, HeaderDigest: "area1"}}})
	s.Files[Name+"/"+recordName("server-1")] = rec
	return s
}

const planProfile = `apiVersion: castellan/v1alpha1
kind: Cluster
metadata: {name: lab}
spec:
  ssh: {user: admin, keyFile: k, knownHosts: kh}
  nodes:
    - {name: server-1, address: 192.0.2.1, role: server, dataDisks: [{device: /dev/vdb}]}
`

type planCase struct {
	name    string
	profile func(*profile.Profile)
	facts   func(*facts.Node)
	obs     func(*DiskState)
	store   func(*enginetest.MemStore)
	done    bool // start from the finished disk (doneFacts, doneObs, doneStore)
	actions []string
	err     string
}

// planWith plans the phase through the engine against a FakeNodes node
// answering the observation fixture.
func planWith(t *testing.T, c planCase) (engine.Plan, int, error) {
	t.Helper()
	p, err := profile.Parse("t.yaml", []byte(planProfile))
	if err != nil {
		t.Fatal(err)
	}
	if c.profile != nil {
		c.profile(p)
	}
	f, obs, store := blankFacts(), blankObs(), enginetest.NewMemStore()
	if c.done {
		f, obs, store = doneFacts(), doneObs(), doneStore()
	}
	if c.facts != nil {
		c.facts(&f)
	}
	if c.obs != nil {
		c.obs(&obs)
	}
	if c.store != nil {
		c.store(store)
	}
	nodes := enginetest.NewFakeNodes(Phase{}.Ops()...)
	observed := 0
	nodes.Handle("server-1", OpObserve, func(raw json.RawMessage) (any, error) {
		observed++
		in, err := agent.Decode[ObserveRequest](raw)
		if err != nil {
			return nil, err
		}
		if len(in.Disks) != 1 || in.Disks[0].Device != "/dev/vdb" || in.Disks[0].MountPoint != tMP {
			return nil, fmt.Errorf("unexpected observation request %+v", in)
		}
		return Observation{Disks: []DiskState{obs}}, nil
	})
	for _, op := range (Phase{}).Ops() {
		if !op.IsReadOnly() {
			nodes.Handle("server-1", op, func(json.RawMessage) (any, error) { return nil, fmt.Errorf("a plan called %s", op.OpName()) })
		}
	}
	s := engine.NewSession(engine.SessionConfig{ID: "plan", Profile: p, Nodes: p.Spec.Nodes, Access: nodes, Store: store})
	e := engine.Engine{Phases: []engine.Phase{factsPhase{f}, Phase{}}}
	plans, err := e.PlanAll(context.Background(), s, e.Phases)
	for _, pl := range plans {
		if pl.Phase == Name {
			return pl, observed, err
		}
	}
	return engine.Plan{}, observed, err
}

// TestPlanDiskStates is the plan of every state a data disk can be in.
func TestPlanDiskStates(t *testing.T) {
	ext4 := func(f *facts.Node) {
		f.Disks[1].Signatures = []facts.Signature{{Type: "ext4", Offset: 1080, Label: "old", UUID: "5e1c0f2a-0000-4000-8000-000000000001"}}
	}
	allow := func(p *profile.Profile) { p.Spec.Nodes[0].DataDisks[0].AllowFormat = true }
	foreignLUKS := func(o *DiskState) {
		o.Header = &Header{Primary: CopyOK, Secondary: CopyOK, UUID: "11111111-2222-4333-8444-555555555555", DataOffset: 16 << 20,
			Keyslots: []Keyslot{{ID: 0, KDF: "argon2id"}}}
	}
	cases := []planCase{
		{name: "blank", actions: []string{ActionEncrypt}},
		{name: "blank, no TPM", facts: func(f *facts.Node) { f.TPM = facts.TPM{} }, err: "the node has no TPM 2.0 (/dev/tpmrm0) to unlock it at boot"},
		{name: "filesystem", facts: ext4, err: `data disk /dev/vdb holds an ext4 filesystem (label "old", UUID 5e1c0f2a-0000-4000-8000-000000000001): castellan never formats a disk that holds data, and left it as it is; if it may be destroyed, set allowFormat: true on spec.nodes[server-1].dataDisks[0]`},
		{name: "filesystem, allowFormat", facts: ext4, profile: allow, actions: []string{ActionEncrypt}},
		{name: "partition table", facts: func(f *facts.Node) {
			f.Disks[1].Signatures = []facts.Signature{{Type: "gpt", Offset: 512}, {Type: "xfs", Device: "vdb1", UUID: "u1"}}
			f.Disks[1].Partitions = []string{"vdb1"}
		}, err: "holds a GPT partition table; an XFS filesystem (UUID u1) on vdb1; partitions vdb1: castellan never formats"},
		{name: "LVM physical volume", facts: func(f *facts.Node) {
			f.Disks[1].Signatures = []facts.Signature{{Type: "LVM2_member", Offset: 536, UUID: "AbCdEf-1234"}}
		}, err: "holds an LVM physical volume (UUID AbCdEf-1234): castellan never formats"},
		{name: "LVM in use, allowFormat", profile: allow, facts: func(f *facts.Node) {
			f.Disks[1].Signatures = []facts.Signature{{Type: "LVM2_member", Offset: 536}}
			f.Disks[1].Holders, f.Disks[1].Busy = []string{"dm-3"}, true
		}, err: "data disk /dev/vdb is held by dm-3 (device-mapper, md or bcache): castellan never touches a disk in use"},
		{name: "mounted", profile: allow, facts: func(f *facts.Node) {
			f.Disks[1].Signatures = []facts.Signature{{Type: "ext4", Offset: 1080}}
			f.Disks[1].Mounted, f.Disks[1].Mounts = true, []string{"/srv"}
		}, err: "data disk /dev/vdb is in use (/srv): castellan never touches a disk in use"},
		{name: "busy", facts: func(f *facts.Node) { f.Disks[1].Busy = true }, err: "the kernel refuses to open it exclusively"},
		{name: "missing", facts: func(f *facts.Node) { f.Devices[0] = facts.Device{Path: "/dev/vdb", Kind: facts.DeviceMissing} },
			obs: func(o *DiskState) {
				*o = DiskState{Device: "/dev/vdb", Error: "resolving /dev/vdb: no such file or directory"}
			},
			err: "data disk /dev/vdb does not exist: attach it, or fix spec.nodes[server-1].dataDisks[0]; nothing was changed"},
		{name: "a partition", facts: func(f *facts.Node) {
			f.Devices[0] = facts.Device{Path: "/dev/vdb", Kind: facts.DevicePartition, Disk: "vda", Partition: 2}
		}, err: "data disk /dev/vdb is partition 2 of vda"},
		{name: "foreign LUKS", obs: foreignLUKS, facts: func(f *facts.Node) {
			f.Disks[1].Signatures = []facts.Signature{{Type: "luks2", UUID: "11111111-2222-4333-8444-555555555555", LUKS: &facts.LUKS{Version: 2, Keyslots: 1}}}
		}, err: "holds a LUKS2 header (UUID 11111111-2222-4333-8444-555555555555): castellan never formats"},
		{name: "foreign LUKS, allowFormat", obs: foreignLUKS, profile: allow, facts: func(f *facts.Node) {
			f.Disks[1].Signatures = []facts.Signature{{Type: "luks2", UUID: "11111111-2222-4333-8444-555555555555"}}
		}, actions: []string{ActionEncrypt}},
		{name: "castellan's LUKS of another node", done: true, obs: func(o *DiskState) {
			tok := ownToken()
			tok.Node = "agent-1"
			o.Header = ownHeader(tok)
			o.Mapping, o.MountPoint = nil, MountPointState{}
		}, facts: func(f *facts.Node) { f.Disks[1].Holders, f.Disks[1].Busy = nil, false },
			err: `holds castellan's encryption of cluster "lab" node "agent-1" (LUKS2 UUID ` + tUUID + `); a LUKS2 header (UUID ` + tUUID + `, tokens castellan, systemd-tpm2): castellan never formats`},
		{name: "castellan's LUKS, done", done: true},
		{name: "castellan's LUKS, not unlocked at boot: the TPM refuses (replaced)", done: true, obs: func(o *DiskState) {
			o.Mapping, o.MountPoint = nil, MountPointState{Exists: true}
			o.TPM = TPMProbe{Result: TPMRefused, Detail: "No usable token is available."}
		}, facts: func(f *facts.Node) { f.Disks[1].Holders, f.Disks[1].Busy = nil, false },
			actions: []string{ActionEnrolTPM, ActionSetup}},
		{name: "castellan's LUKS, the TPM is gone", done: true, obs: func(o *DiskState) {
			o.TPM = TPMProbe{Result: TPMNoDevice, Detail: "no TPM resource manager"}
		}, err: "the node has no TPM any more"},
		{name: "castellan's LUKS, PCRs changed in the profile", done: true, profile: func(p *profile.Profile) { p.Spec.DiskEncryption.PCRs = []int{0, 7} },
			actions: []string{ActionEnrolTPM}},
		{name: "castellan's LUKS, two TPM2 keyslots (a cut-off re-enrolment)", done: true, obs: func(o *DiskState) {
			o.Header.Keyslots = append(o.Header.Keyslots, Keyslot{ID: 2, KDF: "pbkdf2", Salt: "s2"})
			o.Header.Tokens = append(o.Header.Tokens, TokenRef{ID: 2, Type: TPM2TokenType, Keyslots: []int{2}, TPM2: &TPM2Token{PCRs: []int{7}}})
		}, actions: []string{ActionEnrolTPM}},
		{name: "castellan's LUKS, no TPM2 keyslot", done: true, obs: func(o *DiskState) { o.Header.Tokens = o.Header.Tokens[:1] },
			actions: []string{ActionEnrolTPM}},
		{name: "castellan's LUKS, recovery generation raised", done: true, profile: func(p *profile.Profile) { p.Spec.DiskEncryption.RecoveryGeneration = 2 },
			actions: []string{ActionRotate}},
		{name: "castellan's LUKS, a rotation cut off (pending)", done: true, profile: func(p *profile.Profile) { p.Spec.DiskEncryption.RecoveryGeneration = 2 },
			obs: func(o *DiskState) { o.Header.Tokens[0].Castellan.Pending = &Slot{Keyslot: 2, Generation: 2} }, actions: []string{ActionRotate}},
		{name: "castellan's LUKS, a rotation cut off (old keyslot retired)", done: true,
			obs: func(o *DiskState) { o.Header.Tokens[0].Castellan.Retired = []Retired{{Keyslot: 3, Salt: "s3"}} }, actions: []string{ActionRotate}},
		{name: "castellan's LUKS, generation newer than the profile's", done: true, profile: func(p *profile.Profile) { p.Spec.DiskEncryption.RecoveryGeneration = 1 },
			obs: func(o *DiskState) { o.Header.Tokens[0].Castellan.Recovery.Generation = 3 },
			store: func(s *enginetest.MemStore) {
				s.Secrets[Name+"/"+recoverySecret("server-1", tUUID, 3)] = []byte("x")
				rec, _ := json.Marshal(Record{Disks: []RecordDisk{{Device: "/dev/vdb", UUID: tUUID, MountPoint: tMP, Generation: 3, PCRs: []int{7}, HeaderDigest: "area1"}}})
				s.Files[Name+"/"+recordName("server-1")] = rec
			}},
		{name: "castellan's LUKS, header half written (primary missing)", done: true, obs: func(o *DiskState) {
			o.Header.Primary = CopyMissing
			o.Mapping, o.MountPoint = nil, MountPointState{}
		}, facts: func(f *facts.Node) { f.Disks[1].Holders, f.Disks[1].Busy = nil, false },
			store:   func(s *enginetest.MemStore) { s.Secrets[Name+"/"+headerSecret("server-1", tUUID)] = realHeader(t) },
			actions: []string{ActionWriteHeader, ActionSetup}},
		{name: "castellan's LUKS, header damaged, nothing escrowed", done: true, obs: func(o *DiskState) {
			o.Header.Primary, o.Header.Problem = CopyDamaged, "primary: checksum mismatch"
		}, store: func(s *enginetest.MemStore) { delete(s.Secrets, Name+"/"+headerSecret("server-1", tUUID)) },
			err: "is damaged (primary copy damaged, secondary ok: primary: checksum mismatch) and the state repo holds no escrowed header"},
		{name: "castellan's LUKS, recovery passphrase not escrowed", done: true,
			store: func(s *enginetest.MemStore) { delete(s.Secrets, Name+"/"+recoverySecret("server-1", tUUID, 1)) },
			err:   "has its recovery passphrase at generation 1, and the state repo holds no secrets/diskcrypt/server-1/" + tUUID + "/recovery-1"},
		{name: "castellan's LUKS, header not escrowed", done: true,
			store:   func(s *enginetest.MemStore) { delete(s.Secrets, Name+"/"+headerSecret("server-1", tUUID)) },
			actions: []string{ActionBackup}},
		{name: "castellan's LUKS, header changed since escrowed", done: true, obs: func(o *DiskState) { o.HeaderArea = "area2" },
			actions: []string{ActionBackup}},
		{name: "castellan's LUKS, crypttab line gone", done: true, obs: func(o *DiskState) { o.Crypttab = TabState{} },
			actions: []string{ActionSetup}},
		{name: "castellan's LUKS, open, no filesystem yet", done: true, obs: func(o *DiskState) {
			o.Mapping.FilesystemUUID, o.Mapping.Mounts = "", nil
			o.Fstab, o.MountPoint = TabState{}, MountPointState{}
		}, actions: []string{ActionSetup}},
		{name: "castellan's LUKS, another filesystem inside", done: true, obs: func(o *DiskState) { o.Mapping.FilesystemUUID = "99999999-0000-4000-8000-000000000000" },
			err: "its opened mapping holds ext4 UUID 99999999-0000-4000-8000-000000000000, not the " + tFSUUID + " castellan made"},
		{name: "castellan's LUKS, mount point holds files", done: true, obs: func(o *DiskState) {
			o.Mapping.Mounts, o.MountPoint = nil, MountPointState{Exists: true, Entries: 3}
		}, err: "mount point " + tMP + " holds 3 entries on the system disk"},
		{name: "castellan's LUKS, fstab mounts something else there", done: true, obs: func(o *DiskState) {
			o.Fstab.Conflicts = []string{"/dev/sdz1 " + tMP + " xfs defaults 0 0"}
		}, err: "/etc/fstab already mounts something else at " + tMP},
		{name: "castellan's LUKS, mounted elsewhere", done: true, obs: func(o *DiskState) {
			o.Mapping.Mounts, o.MountPoint = []string{"/srv/data"}, MountPointState{Exists: true}
		}, err: "data disk /dev/vdb is mounted at /srv/data, the profile says " + tMP},
		{name: "castellan's LUKS, held by something else", done: true, facts: func(f *facts.Node) { f.Disks[1].Holders = []string{"dm-0", "md0"} },
			err: "is held by md0, which is not its mapping"},
		{name: "castellan's LUKS, the raw disk mounted", done: true, facts: func(f *facts.Node) { f.Disks[1].Mounted, f.Disks[1].Mounts = true, []string{"/mnt"} },
			err: "is itself mounted (/mnt)"},
		{name: "castellan's LUKS, named another way", done: true, obs: func(o *DiskState) { o.Header.Tokens[0].Castellan.Device = "/dev/disk/by-id/virtio-data" }},
		{name: "disk encryption disabled", profile: func(p *profile.Profile) { off := false; p.Spec.DiskEncryption.Enabled = &off }, facts: ext4},
	}
	var golden strings.Builder
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan, observed, err := planWith(t, c)
			fmt.Fprintf(&golden, "== %s\n", c.name)
			for _, ch := range plan.Changes {
				fmt.Fprintf(&golden, "%s %s %s: %s\n", ch.Node, ch.Action, ch.Target, ch.Summary)
			}
			for _, n := range plan.Notes {
				fmt.Fprintf(&golden, "note: %s\n", n)
			}
			if err != nil {
				fmt.Fprintf(&golden, "error: %v\n", err)
			}
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("plan error = %v\nwant it to contain %q", err, c.err)
				}
				if len(plan.Changes) > 0 {
					t.Errorf("a refused disk still has changes: %+v", plan.Changes)
				}
				return
			}
			if err != nil {
				t.Fatalf("plan: %v", err)
			}
			var got []string
			for _, ch := range plan.Changes {
				got = append(got, ch.Action)
				if ch.Node != "server-1" || ch.Target != "/dev/vdb" {
					t.Errorf("change %s on %s target %s", ch.Action, ch.Node, ch.Target)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(c.actions) {
				t.Errorf("actions %v, want %v", got, c.actions)
			}
			if c.name == "disk encryption disabled" && observed != 0 {
				t.Errorf("a disabled phase observed the node %d times", observed)
			}
		})
	}
	checkGolden(t, "plan.golden", golden.String())
}

// realHeader is a whole header made by the real cryptsetup and
// systemd-cryptenroll (on a software TPM): UUID tUUID, castellan's token of
// server-1, a TPM2 token on PCR 7.
func realHeader(t *testing.T) []byte {
	t.Helper()
	n := testNode(t, startSwtpm(t, ""))
	p, _ := NewPassphrase()
	area, err := n.Prepare(ctxT(t), PrepareRequest{UUID: tUUID, SectorSize: 4096, Passphrase: p, Token: ownToken(), PCRs: []int{7}})
	if err != nil {
		t.Fatal(err)
	}
	return area.Header
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (run with -update after checking):\n--- want\n%s\n--- got\n%s", p, want, got)
	}
}

// TestPlanBeforeTheAgentIsThere: at the prompt of a first apply (no agent
// yet, so no facts), every data disk is planned in outline, saying what
// happens to a disk that holds data, instead of nothing at all; the plan
// reads nothing on the node.
func TestPlanBeforeTheAgentIsThere(t *testing.T) {
	for _, allow := range []bool{false, true} {
		p, err := profile.Parse("t.yaml", []byte(planProfile))
		if err != nil {
			t.Fatal(err)
		}
		p.Spec.Nodes[0].DataDisks[0].AllowFormat = allow
		nodes := enginetest.NewFakeNodes(Phase{}.Ops()...)
		nodes.SetAgent("server-1", false)
		s := engine.NewSession(engine.SessionConfig{ID: "plan", Profile: p, Nodes: p.Spec.Nodes, Access: nodes, Store: enginetest.NewMemStore()})
		plan, err := Phase{}.Plan(context.Background(), s.View(Name))
		if err != nil {
			t.Fatal(err)
		}
		if len(plan.Changes) != 1 || plan.Changes[0].Action != ActionEncrypt || plan.Changes[0].Target != "/dev/vdb" {
			t.Fatalf("allowFormat %v: plan = %+v", allow, plan)
		}
		want := "a disk that holds data is refused"
		if allow {
			want = "whatever it holds is DESTROYED"
		}
		if !strings.Contains(plan.Changes[0].Summary, want) {
			t.Errorf("allowFormat %v: %q lacks %q", allow, plan.Changes[0].Summary, want)
		}
		if calls := nodes.Calls(); len(calls) != 0 {
			t.Errorf("the plan asked the node %v", calls)
		}
	}
}
