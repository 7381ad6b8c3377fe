package diskcrypt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestEnsureLineKeepsEverythingElse(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fstab")
	orig := "# /etc/fstab: static file system information.\nUUID=1 / ext4 errors=remount-ro 0 1\n\n/dev/mapper/castellan-u /old ext4 defaults 0 2\n/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0"
	if err := os.WriteFile(p, []byte(orig), 0o640); err != nil {
		t.Fatal(err)
	}
	ours := func(f []string) bool { return f[0] == "/dev/mapper/castellan-u" }
	line := "/dev/mapper/castellan-u /data ext4 defaults,nofail 0 2"
	changed, err := ensureLine(p, line, ours)
	if err != nil || !changed {
		t.Fatalf("ensureLine = %v, %v", changed, err)
	}
	got, _ := os.ReadFile(p)
	want := "# /etc/fstab: static file system information.\nUUID=1 / ext4 errors=remount-ro 0 1\n\n/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0\n" + line + "\n"
	if string(got) != want {
		t.Errorf("fstab:\n%s\nwant:\n%s", got, want)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640 kept", fi.Mode().Perm())
	}
	if changed, err := ensureLine(p, line, ours); err != nil || changed {
		t.Errorf("a second ensureLine changed the file (%v)", err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".fstab.castellan-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	// A missing file is created 0644.
	q := filepath.Join(t.TempDir(), "crypttab")
	if _, err := ensureLine(q, CrypttabLine(tUUID), func(f []string) bool { return f[0] == MappingName(tUUID) }); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(q); string(b) != CrypttabLine(tUUID)+"\n" {
		t.Errorf("crypttab %q", b)
	}
	st := crypttabState([]byte("# x\nother UUID="+tUUID+" none luks\n"+CrypttabLine(tUUID)+"\n"), tUUID)
	if len(st.Ours) != 1 || len(st.Conflicts) != 1 {
		t.Errorf("crypttab state %+v", st)
	}
	fs := fstabState([]byte("/dev/sdz1 /srv\\040data xfs defaults 0 0\n"), tUUID, "/srv data")
	if len(fs.Conflicts) != 1 {
		t.Errorf("an escaped mount point was not matched: %+v", fs)
	}
}

// FuzzEnsureLine: whatever the file holds, ensureLine leaves exactly one of
// our lines, and every other line as it was, in order.
func FuzzEnsureLine(f *testing.F) {
	f.Add("UUID=1 / ext4 defaults 0 1\n#c\n\n/dev/mapper/castellan-u /x ext4 defaults 0 2\n")
	f.Add("")
	f.Add("\n\n/dev/mapper/castellan-u")
	f.Fuzz(func(t *testing.T, content string) {
		if strings.ContainsRune(content, '\r') {
			return
		}
		p := filepath.Join(t.TempDir(), "tab")
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		ours := func(f []string) bool { return f[0] == "/dev/mapper/castellan-u" }
		line := "/dev/mapper/castellan-u /data ext4 defaults,nofail 0 2"
		if _, err := ensureLine(p, line, ours); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		var others, mine []string
		for _, l := range parseTab(got) {
			if len(l.fields) > 0 && ours(l.fields) {
				mine = append(mine, l.text)
			} else {
				others = append(others, l.text)
			}
		}
		var before []string
		for _, l := range parseTab([]byte(content)) {
			if len(l.fields) == 0 || !ours(l.fields) {
				before = append(before, l.text)
			}
		}
		if len(mine) != 1 || mine[0] != line {
			t.Fatalf("our lines: %q", mine)
		}
		if strings.Join(others, "\n") != strings.Join(before, "\n") {
			t.Fatalf("other lines changed:\n%q\n%q", before, others)
		}
	})
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add([]byte("36 35 98:0 /mnt1 /mnt/par\\040ent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n22 1 253:0 / /var/lib/castellan/data/vdb rw - ext4 /dev/mapper/castellan-x rw\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, m := range parseMountinfo(b) {
			if m.Major < 0 || m.Minor < 0 {
				t.Fatalf("negative device number %+v", m)
			}
		}
	})
}

func TestParseMountinfo(t *testing.T) {
	ms := parseMountinfo([]byte("36 35 98:0 /mnt1 /mnt/par\\040ent rw,noatime master:1 - ext3 /dev/root rw\nbad line\n22 1 253:0 / /data rw - ext4 /dev/mapper/castellan-x rw\n"))
	if len(ms) != 2 || ms[0].MountPoint != "/mnt/par ent" || ms[0].FSType != "ext3" || ms[1].Major != 253 || ms[1].Source != "/dev/mapper/castellan-x" {
		t.Errorf("%+v", ms)
	}
}

// TestUnitNamesAsSystemdEscapes them: the real systemd-escape is the peer.
func TestUnitNamesAsSystemdEscapes(t *testing.T) {
	if _, err := exec.LookPath("systemd-escape"); err != nil {
		needCommands(t, "systemd-escape")
	}
	for _, s := range []string{MappingName(tUUID), "castellan-x.y_z:1", ".hidden", "a b/c", "ümlaut"} {
		want := strings.TrimSpace(run(t, "", "systemd-escape", "--", s))
		if got := unitEscape(s); got != want {
			t.Errorf("unitEscape(%q) = %q, systemd-escape says %q", s, got, want)
		}
	}
	for _, p := range []string{"/var/lib/castellan/data/vdb", "/srv/my-data", "/data/", "/"} {
		want := strings.TrimSpace(run(t, "", "systemd-escape", "--path", "--suffix=mount", "--", p))
		if got := mountUnit(p); got != want {
			t.Errorf("mountUnit(%q) = %q, systemd-escape says %q", p, got, want)
		}
	}
	if got := cryptsetupUnit(MappingName(tUUID)); !strings.HasPrefix(got, `systemd-cryptsetup@castellan\x2d0f1e2d3c\x2d`) {
		t.Errorf("cryptsetupUnit = %s", got)
	}
}

func TestPassphraseNeverPrints(t *testing.T) {
	p, err := NewPassphrase()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^([cbdefghijklnrtuv]{8}-){7}[cbdefghijklnrtuv]{8}$`).MatchString(string(p)) {
		t.Errorf("passphrase format %q", string(p))
	}
	if q, _ := NewPassphrase(); q == p {
		t.Error("two passphrases are the same")
	}
	req := EnrolRequest{Device: "/dev/vdb", Passphrase: p}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "p", p, "req", req,
		"prepare", PrepareRequest{Passphrase: p}, "rotate", RotateRequest{Current: p, New: p})
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "p", p, "req", req)
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%v %+v %#v %s %q %x", p, req, req, p, p, p), logged.String()} {
		if strings.Contains(s, string(p)) {
			t.Errorf("printed: %s", s)
		}
	}
	raw, _ := json.Marshal(req)
	if !strings.Contains(string(raw), string(p)) {
		t.Error("the JSON input does not carry the passphrase")
	}
}

// TestExecRunnerKeepsSecretsOffArgvAndDisk: a command receives the secret
// on stdin, on a pipe (fd 3) and on a memfd (fd 4), never in its argv or
// environment, and the memfd is no file on any filesystem.
func TestExecRunnerKeepsSecretsOffArgvAndDisk(t *testing.T) {
	script := `printf 'stdin=%s\n' "$(cat)"; printf 'fd3=%s\n' "$(cat /proc/self/fd/3)"; printf 'fd4=%s\n' "$(cat /proc/self/fd/4)"; printf 'link4=%s\n' "$(readlink /proc/self/fd/4)"; printf 'mode4=%s\n' "$(stat -L -c %a /proc/self/fd/4)"; tr '\0' ' ' </proc/self/cmdline; echo; tr '\0' ' ' </proc/self/environ; echo`
	out, err := ExecRunner{}.Run(ctxT(t), Cmd{Argv: []string{"sh", "-c", script},
		Stdin: []byte("s-one"), Files: []Input{{Data: []byte("s-two")}, {Data: []byte("s-three"), Seekable: true}}})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(out), "\n")
	if len(lines) < 7 || lines[0] != "stdin=s-one" || lines[1] != "fd3=s-two" || lines[2] != "fd4=s-three" || lines[4] != "mode4=400" {
		t.Fatalf("output:\n%s", out)
	}
	if !strings.HasPrefix(lines[3], "link4=/memfd:castellan-key") {
		t.Errorf("fd 4 is %s, not a memfd", lines[3])
	}
	for _, l := range lines[5:] {
		if strings.Contains(l, "s-one") || strings.Contains(l, "s-two") || strings.Contains(l, "s-three") {
			t.Errorf("a secret is in the command line or environment: %s", l)
		}
	}
	// A failing command's error says what ran and what it said, not its input.
	_, err = ExecRunner{}.Run(ctxT(t), Cmd{Argv: []string{"sh", "-c", "echo oops >&2; exit 3"}, Stdin: []byte("s-one")})
	var ce *CommandError
	if !errorsAs(err, &ce) || ce.ExitCode() != 3 || !strings.Contains(err.Error(), "oops") || strings.Contains(err.Error(), "s-one") {
		t.Errorf("error = %v", err)
	}
}
