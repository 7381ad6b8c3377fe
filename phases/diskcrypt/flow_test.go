package diskcrypt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/engine/enginetest"
	"castellan/installer/facts"
	"castellan/installer/profile"
	"castellan/phases/preflight"
)

// The crash tests kill a node operation at a step boundary for real: the
// operation runs in a child process (this test binary again, childEnv set),
// which SIGKILLs itself when it reaches the step.
const childEnv = "CASTELLAN_DISKCRYPT_TEST_CHILD"

// childRequest is what the child reads on stdin.
type childRequest struct {
	Op          string          `json:"op"`
	Root        string          `json:"root"`
	TPM2Device  string          `json:"tpm2Device"`
	FakeSystemd bool            `json:"fakeSystemd"`
	CrashAt     string          `json:"crashAt"`
	Input       json.RawMessage `json:"input"`
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

func runChild() int {
	var req childRequest
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	n := &Node{Root: req.Root, Run: ExecRunner{}, TPM2Device: req.TPM2Device, PBKDF: testPBKDF}
	if req.FakeSystemd {
		n.Run, n.Systemd = &fakeSystemd{root: req.Root, real: ExecRunner{}}, true
	}
	n.crash = func(step string) {
		if step == req.CrashAt {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
	out, err := n.Handlers()[req.Op](req.Input)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

// killedAt runs op in a child process that is SIGKILLed at step; it fails
// the test unless the child died of SIGKILL (the step was reached).
func killedAt(t *testing.T, n *Node, op, step string, input json.RawMessage) error {
	t.Helper()
	_, fake := n.Run.(*fakeSystemd)
	req, _ := json.Marshal(childRequest{Op: op, Root: n.Root, TPM2Device: n.TPM2Device, FakeSystemd: fake, CrashAt: step, Input: input})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stdin = bytes.NewReader(req)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return fmt.Errorf("%s killed at step %s", op, step)
		}
	}
	t.Fatalf("%s did not reach step %s (%v): %s", op, step, err, stderr.String())
	return nil
}

// fakePreflight is a FAKE preflight phase for these tests: it publishes
// facts of the test tree's disks as preflight would (signatures from
// preflight's own Probe of each image, holders from the tree's /sys).
type fakePreflight struct {
	root  string
	noTPM bool
}

func (fakePreflight) Name() string         { return "preflight" }
func (fakePreflight) Ops() []agent.Handler { return nil }
func (fakePreflight) Apply(context.Context, *engine.Run, engine.Plan) error {
	return nil
}

func (f fakePreflight) Plan(_ context.Context, v *engine.View) (engine.Plan, error) {
	for _, n := range v.Nodes() {
		fn := facts.Node{Systemd: true, TPM: facts.TPM{Present: !f.noTPM, Device: "/dev/tpmrm0", Version: "2.0"}}
		for _, d := range n.DataDisks {
			name := filepath.Base(d.Device)
			img := filepath.Join(f.root, d.Device)
			fd, err := os.Open(img)
			if err != nil {
				fn.Devices = append(fn.Devices, facts.Device{Path: d.Device, Kind: facts.DeviceMissing})
				continue
			}
			fi, _ := fd.Stat()
			sigs, err := preflight.Probe(fd, fi.Size())
			fd.Close()
			if err != nil {
				return engine.Plan{}, err
			}
			disk := facts.Disk{Name: name, Path: d.Device, SizeB: uint64(fi.Size()), Signatures: sigs}
			if len(sigs) > 0 {
				disk.Signature = sigs[0].Type
			}
			if hs, err := os.ReadDir(filepath.Join(f.root, "sys/block", name, "holders")); err == nil {
				for _, h := range hs {
					disk.Holders = append(disk.Holders, h.Name())
				}
			}
			fn.Disks = append(fn.Disks, disk)
			fn.Devices = append(fn.Devices, facts.Device{Path: d.Device, Resolved: d.Device, Kind: facts.DeviceDisk, Disk: name})
		}
		if err := engine.Publish(v, facts.Key, n.Name, fn); err != nil {
			return engine.Plan{}, err
		}
	}
	return engine.Plan{}, nil
}

// flow runs the phase through the engine against one node whose node side
// is n (real cryptsetup, systemd-cryptenroll on swtpm, images; the fake
// systemd above), with a state store.
type flow struct {
	t     *testing.T
	n     *Node
	tpm   *swtpm
	sd    *fakeSystemd
	store engine.Store
	prof  *profile.Profile
	phase Phase
	// kill makes the next call of an operation run in a child process that
	// is killed at the step (op name -> step), once.
	kill   map[string]string
	events *engine.Recorder
	noTPM  bool
}

const flowProfile = `apiVersion: castellan/v1alpha1
kind: Cluster
metadata: {name: lab}
spec:
  ssh: {user: admin, keyFile: k, knownHosts: kh}
  nodes:
    - {name: server-1, address: 192.0.2.1, role: server, dataDisks: [{device: /dev/vdb}]}
`

func newFlow(t *testing.T, store engine.Store) *flow {
	t.Helper()
	tpm := startSwtpm(t, "")
	n := testNode(t, tpm)
	sd := &fakeSystemd{root: n.Root, real: ExecRunner{}}
	n.Run, n.Systemd = sd, true
	image(t, n, "vdb", 64<<20)
	p, err := profile.Parse("t.yaml", []byte(flowProfile))
	if err != nil {
		t.Fatal(err)
	}
	if store == nil {
		store = enginetest.NewMemStore()
	}
	f := &flow{t: t, n: n, tpm: tpm, sd: sd, store: store, prof: p, kill: map[string]string{}, events: &engine.Recorder{}}
	t.Cleanup(func() {
		// The mount points are immutable: let the test's cleanup remove them.
		_ = filepath.Walk(filepath.Join(n.Root, "var"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() {
				_ = setImmutable(p, false)
			}
			return nil
		})
	})
	return f
}

// access is the fake node access of one run: the phase's operations served
// by f.n (or a killed child, per f.kill).
func (f *flow) access() *enginetest.FakeNodes {
	nodes := enginetest.NewFakeNodes(Phase{}.Ops()...)
	handlers := f.n.Handlers()
	for _, op := range (Phase{}).Ops() {
		name := op.OpName()
		nodes.Handle("server-1", op, func(in json.RawMessage) (any, error) {
			if step, ok := f.kill[name]; ok {
				delete(f.kill, name)
				return nil, killedAt(f.t, f.n, name, step, in)
			}
			return handlers[name](in)
		})
	}
	return nodes
}

// apply plans and applies the fake preflight and the phase; it returns the
// run's result and the plan of this phase.
func (f *flow) apply() engine.Result {
	f.t.Helper()
	s := engine.NewSession(engine.SessionConfig{ID: "test", Profile: f.prof, Nodes: f.prof.Spec.Nodes, Access: f.access(), Store: f.store, Sink: f.events})
	e := engine.Engine{Phases: []engine.Phase{fakePreflight{root: f.n.Root, noTPM: f.noTPM}, f.phase}}
	return e.Apply(ctxT(f.t), s, e.Phases, nil)
}

// plan returns this phase's plan.
func (f *flow) plan() (engine.Plan, error) {
	f.t.Helper()
	s := engine.NewSession(engine.SessionConfig{ID: "plan", Profile: f.prof, Nodes: f.prof.Spec.Nodes, Access: f.access(), Store: f.store, Sink: f.events})
	e := engine.Engine{Phases: []engine.Phase{fakePreflight{root: f.n.Root, noTPM: f.noTPM}, f.phase}}
	plans, err := e.PlanAll(ctxT(f.t), s, e.Phases)
	for _, p := range plans {
		if p.Phase == Name {
			return p, err
		}
	}
	return engine.Plan{}, err
}

func (f *flow) mustApply() {
	f.t.Helper()
	res := f.apply()
	if res.Outcome != engine.OutcomeOK && res.Outcome != engine.OutcomeUnchanged {
		f.t.Fatalf("apply: %s: %s %v", res.Outcome, res.Error, res.NodeErrors)
	}
}

func (f *flow) actions() []string {
	f.t.Helper()
	p, err := f.plan()
	if err != nil {
		f.t.Fatalf("plan: %v", err)
	}
	var out []string
	for _, c := range p.Changes {
		out = append(out, c.Action)
	}
	return out
}

// record is the state repo's record of the node.
func (f *flow) record() Record {
	f.t.Helper()
	raw, ok, err := f.store.Data(Name + "/" + recordName("server-1"))
	if err != nil || !ok {
		f.t.Fatalf("no record: %v", err)
	}
	var r Record
	if err := json.Unmarshal(raw, &r); err != nil {
		f.t.Fatal(err)
	}
	return r
}

// secret reads one of the phase's secrets from the store.
func (f *flow) secret(name string) []byte {
	f.t.Helper()
	v, ok, err := f.store.Secret(Name + "/" + name)
	if err != nil || !ok {
		f.t.Fatalf("secret %s: %v %v", name, ok, err)
	}
	return v
}

// checkDone checks the end state: the disk is castellan's LUKS2 with a TPM2
// token on the profile's PCRs, the escrowed recovery passphrase of the
// token's generation opens it, the escrowed header is the disk's, the
// crypttab and fstab lines are there, the (fake) mapping holds the ext4
// castellan made, mounted at the mount point, which is immutable beneath.
func (f *flow) checkDone(pcrs []int, gen int) Token {
	f.t.Helper()
	img := filepath.Join(f.n.Root, "dev/vdb")
	obs, err := f.n.Observe(ctxT(f.t), ObserveRequest{Disks: []DiskRequest{{Device: "/dev/vdb", MountPoint: "/var/lib/castellan/data/vdb"}}})
	if err != nil {
		f.t.Fatal(err)
	}
	d := obs.Disks[0]
	if d.Header == nil || !d.Header.Complete() {
		f.t.Fatalf("header: %+v", d.Header)
	}
	ts := d.Header.CastellanTokens()
	if len(ts) != 1 || ts[0].Castellan == nil {
		f.t.Fatalf("castellan tokens %+v", ts)
	}
	tok := *ts[0].Castellan
	if tok.Recovery.Generation != gen || tok.Pending != nil || len(tok.Retired) != 0 {
		f.t.Errorf("token %+v, want generation %d and nothing pending or retired", tok, gen)
	}
	tpm := d.Header.TPM2Tokens()
	if len(tpm) != 1 || tpm[0].TPM2 == nil || fmt.Sprint(tpm[0].TPM2.PCRs) != fmt.Sprint(pcrs) {
		f.t.Errorf("TPM2 tokens %+v, want one on %v", tpm, pcrs)
	}
	p := Passphrase(f.secret(recoverySecret("server-1", d.Header.UUID, gen)))
	if !opens(f.t, img, p) {
		f.t.Error("the escrowed recovery passphrase does not open the disk")
	}
	if k, ok := d.Header.Keyslot(tok.Recovery.Keyslot); !ok || k.KDF != "argon2id" {
		f.t.Errorf("recovery keyslot %d: %+v", tok.Recovery.Keyslot, k)
	}
	if got := headerArea(f.secret(headerSecret("server-1", d.Header.UUID))).Digest; got != d.HeaderArea {
		f.t.Error("the escrowed header is not the disk's")
	}
	if r, ok := f.record().disk(d.Header.UUID); !ok || r.HeaderDigest != d.HeaderArea || r.Generation != gen {
		f.t.Errorf("record %+v", f.record())
	}
	if len(d.Crypttab.Ours) != 1 || d.Crypttab.Ours[0] != CrypttabLine(d.Header.UUID) {
		f.t.Errorf("crypttab %+v", d.Crypttab)
	}
	if len(d.Fstab.Ours) != 1 || d.Fstab.Ours[0] != FstabLine(d.Header.UUID, "/var/lib/castellan/data/vdb", "ext4") {
		f.t.Errorf("fstab %+v", d.Fstab)
	}
	if d.Mapping == nil || d.Mapping.FilesystemUUID != tok.Filesystem.UUID || !d.MountPoint.Mounted {
		f.t.Errorf("mapping %+v, mount point %+v", d.Mapping, d.MountPoint)
	}
	if on, err := immutable(filepath.Join(f.n.Root, "var/lib/castellan/data/vdb")); err != nil || !on {
		f.t.Errorf("the mount point is not immutable beneath the mount (%v)", err)
	}
	return tok
}

// noPlaintext scans the node's tree (its disk images included), the run's
// events and the store for the plaintext of every recovery passphrase
// escrowed.
func (f *flow) noPlaintext(extra ...[]byte) {
	f.t.Helper()
	var secrets [][]byte
	for _, name := range storedSecretNames(f.store) {
		if strings.Contains(name, "/recovery-") {
			v, _, _ := f.store.Secret(name)
			secrets = append(secrets, v)
		}
	}
	secrets = append(secrets, extra...)
	if len(secrets) == 0 {
		f.t.Fatal("no recovery passphrase was escrowed")
	}
	files := 0
	_ = filepath.Walk(f.n.Root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		files++
		for _, s := range secrets {
			if bytes.Contains(b, s) {
				f.t.Errorf("%s holds a recovery passphrase in plaintext", p)
			}
		}
		return nil
	})
	if files < 3 {
		f.t.Errorf("scanned only %d files", files)
	}
	ev, _ := json.Marshal(f.events.Events())
	for _, s := range secrets {
		if bytes.Contains(ev, s) {
			f.t.Error("the run's events hold a recovery passphrase")
		}
	}
	for _, c := range f.sd.Calls() {
		for _, s := range secrets {
			if strings.Contains(c, string(s)) {
				f.t.Errorf("a command line holds a recovery passphrase: %s", c)
			}
		}
	}
}

// storedSecretNames lists the secret names of a MemStore, or (for the state
// repo) what its SecretNames says.
func storedSecretNames(s engine.Store) []string {
	switch st := s.(type) {
	case *enginetest.MemStore:
		var out []string
		for _, n := range st.Names() {
			if name, ok := strings.CutPrefix(n, "secret "); ok {
				out = append(out, name)
			}
		}
		return out
	case interface{ SecretNames() ([]string, error) }:
		names, _ := st.SecretNames()
		return names
	}
	return nil
}
