//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"castellan/installer/engine"
	castssh "castellan/installer/ssh"
	"castellan/installer/state"
	"castellan/phases/diskcrypt"
)

// The disk encryption phase on the lab (issue 18): every node's /dev/vdb is
// encrypted and mounted, survives a reboot with nobody present, opens with
// the recovery passphrase escrowed in the state repo, a disk holding ext4 is
// refused and left untouched, reruns are no-ops, a TPM that stops unsealing
// is handled (the node still boots; the rerun re-enrols with the recovery
// passphrase), a crash at every step of the sequence is completed by the
// rerun, and no passphrase is found in plaintext on the nodes or in
// castellan's output.
//
// CASTELLAN_CRASH_BIN names a castellan built with -tags
// diskcrypt_crashpoints; without it the test builds one from the source tree
// CASTELLAN_BIN lives in (go build, from the module cache: no network).
// CASTELLAN_E2E_CRASH_STEPS (comma-separated, e.g. "write-secondary,mkfs")
// chooses the crash cases; "all" runs every one, "none" skips them; unset,
// defaultCrashSteps.

const dataMount = "/var/lib/castellan/data/vdb"

// try runs argv as root on node, stdin optional; it does not fail the test.
func (l *lab) try(node string, stdin []byte, argv ...string) (string, error) {
	n, ok := l.p.Node(node)
	if !ok {
		return "", fmt.Errorf("no node %s", node)
	}
	cmd := castssh.Cmd{Argv: argv, Sudo: true}
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := l.pool.Run(ctx, castssh.Host{Name: n.Name, Address: n.Address, Port: n.Port}, cmd)
	return strings.TrimSpace(string(res.Stdout)), err
}

// reconnect replaces the SSH pool (after a reboot its connections are dead).
func (l *lab) reconnect(t *testing.T) {
	t.Helper()
	l.pool.Close()
	var err error
	l.pool, err = castssh.NewPool(castssh.Config{
		User: l.p.Spec.SSH.User, KeyFiles: []string{l.p.Resolve(l.p.Spec.SSH.KeyFile)},
		KnownHostsFile: l.p.Resolve(l.p.Spec.SSH.KnownHosts), Sudo: true,
	})
	if err != nil {
		t.Fatal(err)
	}
}

// resetDiskEncryption makes node's /dev/vdb blank again and removes what
// castellan made on the node (/var/lib/castellan: the agent, the identity
// phase's files...): the lab may be reused, and each test starts with a
// fresh state repo, which would not hold the old disks' passphrases.
func resetDiskEncryption(t *testing.T, l *lab, node string) {
	t.Helper()
	resetDisk(t, l, node, "all")
}

// blankDataDisk makes node's /dev/vdb blank again and removes what the disk
// encryption made, leaving the rest (the agent, the node's identity) as it
// is: the state repo goes on.
func blankDataDisk(t *testing.T, l *lab, node string) {
	t.Helper()
	resetDisk(t, l, node, "disk")
}

func resetDisk(t *testing.T, l *lab, node, what string) {
	t.Helper()
	script := `set -u
for m in $(awk '$1 ~ "^/dev/mapper/castellan-" {print $2}' /etc/fstab 2>/dev/null); do umount "$m" 2>/dev/null; done
for n in $(awk '$1 ~ "^castellan-" {print $1}' /etc/crypttab 2>/dev/null); do
	systemctl stop "systemd-cryptsetup@$(systemd-escape "$n").service" 2>/dev/null
	cryptsetup close "$n" 2>/dev/null
done
sed -i '\#^/dev/mapper/castellan-#d' /etc/fstab
[ -f /etc/crypttab ] && sed -i '/^castellan-/d' /etc/crypttab
systemctl daemon-reload
[ -d /var/lib/castellan/data ] && find /var/lib/castellan/data -xdev -maxdepth 1 -type d -exec chattr -i {} + 2>/dev/null
rm -rf /var/lib/castellan/data /run/castellan/diskcrypt-crash
[ "$1" = all ] && rm -rf /var/lib/castellan /run/castellan
wipefs --all --quiet /dev/vdb
size=$(blockdev --getsize64 /dev/vdb)
dd if=/dev/zero of=/dev/vdb bs=1M count=8 conv=fsync status=none
dd if=/dev/zero of=/dev/vdb bs=1M seek=$((size / 1048576 - 2)) count=2 conv=fsync status=none
lsblk -no FSTYPE /dev/vdb | grep -q . && exit 1
exit 0`
	if out, err := l.try(node, nil, "sh", "-c", script, "reset", what); err != nil {
		t.Fatalf("%s: resetting the data disk: %v %s", node, err, out)
	}
}

// castellanWith runs bin (castellan) with extra environment.
func (l *lab) castellanWith(t *testing.T, bin string, env []string, args ...string) outcome {
	t.Helper()
	saved := l.bin
	l.bin = bin
	defer func() { l.bin = saved }()
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		t.Setenv(k, v)
		defer os.Unsetenv(k)
	}
	return l.castellan(t, args...)
}

// record reads the state repo's record of node's disks.
func (l *lab) record(t *testing.T, node string) diskcrypt.Record {
	t.Helper()
	var r diskcrypt.Record
	raw := readFile(t, filepath.Join(l.dir, "state", "data", "diskcrypt", node+".json"))
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Disks) != 1 || r.Disks[0].Device != "/dev/vdb" {
		t.Fatalf("%s: record %+v", node, r)
	}
	return r
}

// secret decrypts a secret of the state repo with the lab's age identity.
func (l *lab) secret(t *testing.T, name string) []byte {
	t.Helper()
	idf, err := os.Open(os.Getenv(state.IdentityEnv))
	if err != nil {
		t.Fatal(err)
	}
	defer idf.Close()
	ids, err := age.ParseIdentities(idf)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(l.dir, "state", "secrets", name+".age"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := age.Decrypt(f, ids...)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(r); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// opensWith reports whether passphrase opens node's /dev/vdb (cryptsetup
// open --test-passphrase, the passphrase on stdin; no token plugin, which
// would open the disk with the TPM whatever the passphrase).
func (l *lab) opensWith(node string, passphrase []byte) bool {
	_, err := l.try(node, passphrase, "cryptsetup", "open", "--test-passphrase", "--disable-external-tokens", "--key-file", "-", "/dev/vdb")
	return err == nil
}

// checkEncrypted checks node's /dev/vdb: LUKS2 with castellan's token for
// this node and one TPM2 token on pcrs, opened as castellan-UUID, ext4,
// mounted at the mount point, the crypttab and fstab lines castellan
// writes, and the mount point immutable beneath the mount. It returns the
// LUKS UUID.
func (l *lab) checkEncrypted(t *testing.T, node string, pcrs []int) string {
	t.Helper()
	if out, err := l.try(node, nil, "cryptsetup", "isLuks", "--type", "luks2", "/dev/vdb"); err != nil {
		t.Fatalf("%s: /dev/vdb is not LUKS2: %v %s", node, err, out)
	}
	var meta struct {
		Keyslots map[string]struct {
			KDF struct{ Type string } `json:"kdf"`
		} `json:"keyslots"`
		Tokens map[string]json.RawMessage `json:"tokens"`
	}
	if err := json.Unmarshal([]byte(l.on(t, node, "cryptsetup", "luksDump", "--dump-json-metadata", "/dev/vdb")), &meta); err != nil {
		t.Fatal(err)
	}
	var tpm, own int
	var tok diskcrypt.Token
	for _, raw := range meta.Tokens {
		var head struct {
			Type string `json:"type"`
			PCRs []int  `json:"tpm2-pcrs"`
		}
		_ = json.Unmarshal(raw, &head)
		switch head.Type {
		case "systemd-tpm2":
			tpm++
			if fmt.Sprint(head.PCRs) != fmt.Sprint(pcrs) {
				t.Errorf("%s: TPM2 token on PCRs %v, want %v", node, head.PCRs, pcrs)
			}
		case "castellan":
			own++
			var err error
			if tok, err = diskcrypt.DecodeToken(raw); err != nil {
				t.Errorf("%s: castellan token: %v", node, err)
			}
		}
	}
	if tpm != 1 || own != 1 || tok.Cluster != "lab" || tok.Node != node {
		t.Errorf("%s: %d TPM2 and %d castellan tokens (%+v)", node, tpm, own, tok)
	}
	if kdf := meta.Keyslots[fmt.Sprint(tok.Recovery.Keyslot)].KDF.Type; kdf != "argon2id" {
		t.Errorf("%s: recovery keyslot %d KDF %q, want argon2id", node, tok.Recovery.Keyslot, kdf)
	}
	uuid := l.on(t, node, "cryptsetup", "luksUUID", "/dev/vdb")
	name := diskcrypt.MappingName(uuid)
	if got := l.on(t, node, "findmnt", "-n", "-o", "SOURCE,FSTYPE", dataMount); strings.Join(strings.Fields(got), " ") != "/dev/mapper/"+name+" ext4" {
		t.Errorf("%s: %s is mounted from %q", node, dataMount, got)
	}
	if got := l.on(t, node, "sh", "-c", "grep '^castellan-' /etc/crypttab"); got != diskcrypt.CrypttabLine(uuid) {
		t.Errorf("%s: crypttab %q", node, got)
	}
	if got := l.on(t, node, "sh", "-c", `grep '^/dev/mapper/castellan-' /etc/fstab`); got != diskcrypt.FstabLine(uuid, dataMount, "ext4") {
		t.Errorf("%s: fstab %q", node, got)
	}
	// Beneath the mount (in a private mount namespace, where it is
	// unmounted), the mount point is immutable.
	if got, err := l.try(node, nil, "unshare", "--mount", "sh", "-c", "umount "+dataMount+" && lsattr -d "+dataMount); err != nil || !strings.HasPrefix(got, "----i") {
		t.Errorf("%s: the mount point beneath the mount: %q %v", node, got, err)
	}
	return uuid
}

// noPlaintextOnNode scans node's filesystems (not /proc, /sys, /dev) for the
// passphrases, given to grep on stdin, never in its argv.
func (l *lab) noPlaintextOnNode(t *testing.T, node string, passphrases [][]byte) {
	t.Helper()
	patterns := bytes.Join(passphrases, []byte("\n"))
	out, err := l.try(node, patterns, "grep", "-rlsF", "--devices=skip", "-f", "-",
		"--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev", "/")
	var ee *castssh.ExitError
	switch {
	case err == nil:
		t.Errorf("%s: a recovery passphrase is in plaintext in: %s", node, out)
	case errors.As(err, &ee) && (ee.ExitCode == 1 || (ee.ExitCode == 2 && out == "")):
	default:
		t.Errorf("%s: scanning for passphrases: %v", node, err)
	}
}

// waitReboot reboots node and waits until it is back (a new boot id).
func (l *lab) waitReboot(t *testing.T, node string) {
	t.Helper()
	before := l.on(t, node, "cat", "/proc/sys/kernel/random/boot_id")
	_, _ = l.try(node, nil, "systemctl", "reboot")
	deadline := time.Now().Add(8 * time.Minute)
	for {
		time.Sleep(10 * time.Second)
		l.reconnect(t)
		if id, err := l.try(node, nil, "cat", "/proc/sys/kernel/random/boot_id"); err == nil && id != before {
			// Give systemd a moment to finish what it does with nofail units.
			_, _ = l.try(node, nil, "systemctl", "is-system-running", "--wait")
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come back within 8 minutes of a reboot", node)
		}
	}
}

func TestDiskEncryption(t *testing.T) {
	l := setup(t)
	var nodes []string
	for _, n := range l.p.Spec.Nodes {
		nodes = append(nodes, n.Name)
	}
	for _, n := range nodes {
		resetDiskEncryption(t, l, n)
	}
	var outputs []outcome
	passphrases := map[string][][]byte{}
	uuids := map[string]string{}

	t.Run("apply encrypts every data disk", func(t *testing.T) {
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		outputs = append(outputs, o)
		if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeOK {
			t.Fatalf("apply exit %d: %s", o.code, o.brief())
		}
		for _, n := range nodes {
			uuids[n] = l.checkEncrypted(t, n, []int{7})
			r := l.record(t, n)
			if r.Disks[0].UUID != uuids[n] || r.Disks[0].Generation != 1 {
				t.Errorf("%s: record %+v", n, r)
			}
		}
	})

	t.Run("the recovery passphrase from the state repo opens each disk", func(t *testing.T) {
		for _, n := range nodes {
			r := l.record(t, n)
			p := l.secret(t, r.Disks[0].RecoverySecret)
			passphrases[n] = append(passphrases[n], p)
			if !l.opensWith(n, p) {
				t.Errorf("%s: the escrowed recovery passphrase does not open /dev/vdb", n)
			}
			if l.opensWith(n, []byte("cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv")) {
				t.Errorf("%s: another passphrase opens /dev/vdb", n)
			}
			// The escrowed header is the disk's.
			hdr := l.secret(t, r.Disks[0].HeaderSecret)
			if got := l.on(t, n, "sh", "-c", fmt.Sprintf("head -c %d /dev/vdb | sha256sum", len(hdr))); !strings.HasPrefix(got, diskcryptDigest(hdr)) {
				t.Errorf("%s: the escrowed header is not the disk's", n)
			}
		}
	})

	t.Run("a rerun is a no-op", func(t *testing.T) {
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		outputs = append(outputs, o)
		if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeUnchanged {
			t.Fatalf("rerun exit %d, %s", o.code, o.brief())
		}
	})

	t.Run("after a reboot the disk unlocks and mounts with nobody present", func(t *testing.T) {
		node := nodes[0]
		l.on(t, node, "sh", "-c", "echo kept-across-reboot > "+dataMount+"/marker && sync")
		l.waitReboot(t, node)
		l.checkEncrypted(t, node, []int{7})
		if got := l.on(t, node, "cat", dataMount+"/marker"); got != "kept-across-reboot" {
			t.Errorf("%s: marker %q", node, got)
		}
		if got := l.on(t, node, "systemctl", "is-active", "systemd-cryptsetup@"+systemdEscape(diskcrypt.MappingName(uuids[node]))+".service"); got != "active" {
			t.Errorf("%s: the cryptsetup unit is %s", node, got)
		}
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		outputs = append(outputs, o)
		if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeUnchanged {
			t.Errorf("apply after the reboot: exit %d, %s", o.code, o.brief())
		}
	})

	t.Run("a TPM that stops unsealing: the node still boots, the rerun re-enrols", func(t *testing.T) {
		node := nodes[len(nodes)-1]
		l.on(t, node, "sh", "-c", "echo kept > "+dataMount+"/marker && sync")
		// Extending PCR 7 makes the TPM refuse the key sealed to its value,
		// as a changed Secure Boot policy would. The boot state attestation
		// refuses the node first; accepted explicitly, the plan must see
		// the refusal (the TPM probe) and re-enrol on the new value.
		l.on(t, node, "tpm2_pcrextend", "7:sha256=0000000000000000000000000000000000000000000000000000000000000001")
		o := l.castellan(t, "plan", "-f", l.profile, "-o", "json")
		if o.code != 1 || !eventsSay(o, node, "castellan apply --accept-boot-state "+node) {
			t.Fatalf("the plan after PCR 7 changed on %s: exit %d, no refusal of its boot state: %s", node, o.code, o.stderr)
		}
		o = l.castellan(t, "plan", "-f", l.profile, "--accept-boot-state", node, "-o", "json")
		if !planHas(o, node, diskcrypt.ActionEnrolTPM) {
			t.Fatalf("the plan does not re-enrol the TPM of %s: exit %d %s", node, o.code, o.stderr)
		}
		o = l.castellan(t, "apply", "-f", l.profile, "--yes", "--accept-boot-state", node, "-o", "json")
		outputs = append(outputs, o)
		if o.code != 0 {
			t.Fatalf("apply exit %d: %s", o.code, o.brief())
		}
		// After a reboot PCR 7 is the firmware's again: the TPM refuses, the
		// unit fails at once (headless), the boot goes on (nofail), and the
		// bare mount point takes no data (immutable). The boot state is the
		// one before the extension again, accepted again below.
		l.waitReboot(t, node)
		if got, _ := l.try(node, nil, "findmnt", "-n", dataMount); got != "" {
			t.Fatalf("%s: %s is mounted although the TPM should refuse: %s", node, dataMount, got)
		}
		unit := "systemd-cryptsetup@" + systemdEscape(diskcrypt.MappingName(uuids[node])) + ".service"
		if got, _ := l.try(node, nil, "systemctl", "is-failed", unit); got != "failed" {
			t.Errorf("%s: %s is %q, want failed", node, unit, got)
		}
		if _, err := l.try(node, nil, "touch", dataMount+"/plaintext"); err == nil {
			t.Errorf("%s: a file could be written on the system disk beneath the mount point", node)
		}
		o = l.castellan(t, "apply", "-f", l.profile, "--yes", "--accept-boot-state", node, "-o", "json")
		outputs = append(outputs, o)
		if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeOK {
			t.Fatalf("apply after the refused unlock: exit %d, %s", o.code, o.brief())
		}
		l.checkEncrypted(t, node, []int{7})
		if got := l.on(t, node, "cat", dataMount+"/marker"); got != "kept" {
			t.Errorf("%s: marker %q after re-enrolment", node, got)
		}
	})

	t.Run("raising recoveryGeneration rotates every recovery passphrase", func(t *testing.T) {
		raw := readFile(t, l.profile)
		writeFile(t, l.profile, []byte(strings.Replace(string(raw), "  state:\n", "  diskEncryption:\n    recoveryGeneration: 2\n  state:\n", 1)))
		defer writeFile(t, l.profile, raw)
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		outputs = append(outputs, o)
		if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeOK {
			t.Fatalf("apply exit %d: %s", o.code, o.brief())
		}
		for _, n := range nodes {
			r := l.record(t, n)
			p := l.secret(t, r.Disks[0].RecoverySecret)
			passphrases[n] = append(passphrases[n], p)
			if r.Disks[0].Generation != 2 || !l.opensWith(n, p) {
				t.Errorf("%s: generation %d; the new passphrase opens: %v", n, r.Disks[0].Generation, l.opensWith(n, p))
			}
			if l.opensWith(n, passphrases[n][0]) {
				t.Errorf("%s: the old recovery passphrase still opens /dev/vdb", n)
			}
		}
		if o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json"); o.result == nil || o.result.Outcome != engine.OutcomeUnchanged {
			t.Errorf("rerun after the rotation: %s", o.brief())
		}
	})

	t.Run("a disk holding ext4 is refused and left as it is", func(t *testing.T) {
		node := nodes[0]
		loop := l.on(t, node, "sh", "-c", `set -e
truncate -s 600M /var/tmp/castellan-e2e-ext4.img
dev=$(losetup --find --show /var/tmp/castellan-e2e-ext4.img)
mkfs.ext4 -q -L e2e-old "$dev"
mkdir -p /mnt/castellan-e2e && mount "$dev" /mnt/castellan-e2e && echo precious > /mnt/castellan-e2e/data.txt && umount /mnt/castellan-e2e
echo "$dev"`)
		defer l.try(node, nil, "sh", "-c", "losetup --detach "+loop+"; rm -f /var/tmp/castellan-e2e-ext4.img; rmdir /mnt/castellan-e2e")
		sum := func() string { return l.on(t, node, "sha256sum", loop) }
		before := sum()
		raw := readFile(t, l.profile)
		defer writeFile(t, l.profile, raw)
		edited := strings.Replace(string(raw), "        - device: /dev/vdb\n", "        - device: /dev/vdb\n        - device: "+loop+"\n", 1)
		writeFile(t, l.profile, []byte(edited))
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		outputs = append(outputs, o)
		if o.code != 1 || o.result == nil || !strings.Contains(o.result.NodeErrors[node], "data disk "+loop+` holds an ext4 filesystem (label "e2e-old"`) ||
			!strings.Contains(o.result.NodeErrors[node], "allowFormat") {
			t.Errorf("apply with an ext4 disk: exit %d, %s", o.code, o.brief())
		}
		if after := sum(); after != before {
			t.Errorf("%s: the refused disk changed: %s -> %s", node, before, after)
		}
	})

	t.Run("no plaintext passphrase on the nodes or in castellan's output", func(t *testing.T) {
		var all [][]byte
		for _, n := range nodes {
			l.noPlaintextOnNode(t, n, passphrases[n])
			all = append(all, passphrases[n]...)
		}
		for _, o := range outputs {
			ev, _ := json.Marshal(o.events)
			rec, _ := json.Marshal(o.result)
			for _, p := range all {
				if bytes.Contains(ev, p) || bytes.Contains(rec, p) || strings.Contains(o.stderr, string(p)) {
					t.Error("castellan's output holds a recovery passphrase")
				}
			}
		}
	})

	t.Run("a crash at every step is completed by the rerun", func(t *testing.T) {
		crashSteps(t, l, nodes[0])
	})
}

// eventsSay reports whether an event about node holds text.
func eventsSay(o outcome, node, text string) bool {
	for _, e := range o.events {
		if e.Node == node && strings.Contains(e.Message, text) {
			return true
		}
	}
	return false
}

// planHas reports whether a plan (`plan -o json`) or a run's events hold
// the change action on node.
func planHas(o outcome, node, action string) bool {
	for _, e := range o.events {
		if e.Change != nil && e.Node == node && e.Change.Action == action {
			return true
		}
	}
	for _, p := range o.plans {
		for _, c := range p.ForNode(node) {
			if c.Action == action {
				return true
			}
		}
	}
	return false
}

func systemdEscape(s string) string {
	out, err := exec.Command("systemd-escape", "--", s).Output()
	if err != nil {
		return s
	}
	return strings.TrimSpace(string(out))
}

func diskcryptDigest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// crashCase is a step where the crash binary kills itself: an installer
// step ($CASTELLAN_DISKCRYPT_CRASH) or a node step (/run/castellan/diskcrypt-crash).
type e2eCrash struct {
	installer bool
	step      string
	// rotation: the case crashes a rotation (recoveryGeneration raised)
	// rather than the encryption of a blank disk.
	rotation bool
}

var e2eCrashes = []e2eCrash{
	{installer: true, step: diskcrypt.StepEscrowRecovery},
	{step: diskcrypt.StepScratch}, {step: diskcrypt.StepLuksFormat}, {step: diskcrypt.StepTokenImport}, {step: diskcrypt.StepTPMEnrol},
	{installer: true, step: diskcrypt.StepPrepared}, {installer: true, step: diskcrypt.StepEscrowHeader},
	{step: diskcrypt.StepSecondary}, {step: diskcrypt.StepKeyslots}, {step: diskcrypt.StepPrimary},
	{installer: true, step: diskcrypt.StepWritten},
	{step: diskcrypt.StepCrypttab}, {step: diskcrypt.StepOpen}, {step: diskcrypt.StepMkfs},
	{step: diskcrypt.StepMountPoint}, {step: diskcrypt.StepFstab}, {step: diskcrypt.StepMount},
	{rotation: true, step: diskcrypt.StepPending}, {rotation: true, step: diskcrypt.StepAddKeyslot},
	{rotation: true, step: diskcrypt.StepCommitToken}, {rotation: true, step: diskcrypt.StepKillRetired},
}

// defaultCrashSteps is one crash case per stage of the sequence (nothing
// written yet; the LUKS2 header being made; the header escrowed and
// written; the filesystem being made; a rotation's new keyslot), which
// `make e2e` runs: each case costs 1-2 minutes on the TCG lab, all 21
// about 30. CASTELLAN_E2E_CRASH_STEPS=all runs every case.
const defaultCrashSteps = "escrow-recovery,luks-format,written,mkfs,add-keyslot"

// crashSteps runs, on node only, each crash case: the crash binary is
// killed at the step, then the same binary reruns and must complete, and a
// third run must be a no-op.
func crashSteps(t *testing.T, l *lab, node string) {
	want := map[string]bool{}
	switch s := os.Getenv("CASTELLAN_E2E_CRASH_STEPS"); s {
	case "none":
		t.Skip("CASTELLAN_E2E_CRASH_STEPS=none")
	case "all":
	case "":
		s = defaultCrashSteps
		fallthrough
	default:
		for _, x := range strings.Split(s, ",") {
			want[strings.TrimSpace(x)] = true
		}
	}
	bin := crashBinary(t)
	raw := readFile(t, l.profile)
	defer writeFile(t, l.profile, raw)
	gen := 2 // the rotation test above left the disks at generation 2
	for _, c := range e2eCrashes {
		if len(want) > 0 && !want[c.step] {
			continue
		}
		name := "node/" + c.step
		if c.installer {
			name = "installer/" + c.step
		}
		if c.rotation {
			name = "rotation/" + name
		}
		t.Run(name, func(t *testing.T) {
			if c.rotation {
				gen++
				writeFile(t, l.profile, []byte(strings.Replace(string(raw), "  state:\n", fmt.Sprintf("  diskEncryption:\n    recoveryGeneration: %d\n  state:\n", gen), 1)))
				if o := l.castellanWith(t, bin, nil, "apply", "-f", l.profile, "--yes", "--nodes", node, "-o", "json"); o.code != 0 {
					t.Fatalf("bringing %s up to date first: exit %d %s", node, o.code, o.stderr)
				}
				gen++
				writeFile(t, l.profile, []byte(strings.Replace(string(raw), "  state:\n", fmt.Sprintf("  diskEncryption:\n    recoveryGeneration: %d\n  state:\n", gen), 1)))
			} else {
				writeFile(t, l.profile, raw)
				gen = 1
				blankDataDisk(t, l, node)
			}
			var env []string
			if c.installer {
				env = []string{"CASTELLAN_DISKCRYPT_CRASH=" + c.step}
			} else {
				l.on(t, node, "sh", "-c", "mkdir -p /run/castellan && printf %s "+c.step+" > /run/castellan/diskcrypt-crash")
			}
			o := l.castellanWith(t, bin, env, "apply", "-f", l.profile, "--yes", "--nodes", node, "-o", "json")
			if o.code == 0 {
				t.Fatalf("the run did not crash at %s", c.step)
			}
			if left, _ := l.try(node, nil, "cat", "/run/castellan/diskcrypt-crash"); left != "" {
				_, _ = l.try(node, nil, "rm", "-f", "/run/castellan/diskcrypt-crash")
				t.Fatalf("step %s was never reached on %s", c.step, node)
			}
			o = l.castellanWith(t, bin, nil, "apply", "-f", l.profile, "--yes", "--nodes", node, "-o", "json")
			if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeOK {
				t.Fatalf("the rerun after a crash at %s: exit %d, %s", c.step, o.code, o.brief())
			}
			if o := l.castellanWith(t, bin, nil, "apply", "-f", l.profile, "--yes", "--nodes", node, "-o", "json"); o.result == nil || o.result.Outcome != engine.OutcomeUnchanged {
				t.Errorf("a third run after a crash at %s is not a no-op: %s", c.step, o.brief())
			}
			l.checkEncrypted(t, node, []int{7})
			r := l.record(t, node)
			if r.Disks[0].Generation != gen || !l.opensWith(node, l.secret(t, r.Disks[0].RecoverySecret)) {
				t.Errorf("after the rerun: generation %d (want %d), or the escrowed passphrase does not open the disk", r.Disks[0].Generation, gen)
			}
		})
	}
}

// crashBinary is castellan built with -tags diskcrypt_crashpoints.
func crashBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CASTELLAN_CRASH_BIN"); p != "" {
		return p
	}
	root := filepath.Dir(filepath.Dir(os.Getenv("CASTELLAN_BIN")))
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no source tree at %s to build the crash binary from; set CASTELLAN_CRASH_BIN", root)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(t.TempDir(), "castellan-crashpoints")
	cmd := exec.Command(goBin, "build", "-tags", "diskcrypt_crashpoints", "-trimpath", "-o", out, "./cmd/castellan")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly", "GOPROXY=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the crash binary: %v\n%s", err, b)
	}
	return out
}
