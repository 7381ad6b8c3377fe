package ssh

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var knownHostsSeeds = []string{
	"",
	"# comment\n\n   \t\n",
	"10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
	"[2001:db8::7] ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl comment here\r\n",
	"[10.0.0.1]:2222,*.example.org,!bad.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
	"@cert-authority *.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n@revoked * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
	"|1|vS7znAwLuEZvyFSLDRGtWGjbTUY=|CByrl9bHVJ8lCHbUG3ThwTnCM5o= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
	"|1|bad|hash ssh-ed25519 AAAA\n@bogus host ssh-ed25519 AAAA\nhost 1024 35 12345\nhost\n,, ssh-rsa AAAA\n",
	"a*b*c*d*e*f*g*h*i*j*k*l*m*n ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
	"host ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\x00\xff\n",
}

// FuzzKnownHosts checks properties of the known_hosts parser on any input,
// not only the absence of a panic: every line that is neither blank nor a
// comment is exactly one entry or one warning, with its 1-based line
// number; entries come in file order and hold the text of their line;
// re-parsing an entry's text gives the same entry; matching any name
// terminates; ReadKnownHosts agrees with ParseKnownHosts or refuses the
// whole file with a line number inside it.
func FuzzKnownHosts(f *testing.F) {
	for _, s := range knownHostsSeeds {
		f.Add([]byte(s), "10.0.0.1")
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		if len(data) > 1<<20 {
			return
		}
		kh, warnings := ParseKnownHosts("kh", data)
		lines := strings.Split(string(data), "\n")
		if strings.HasSuffix(string(data), "\n") {
			lines = lines[:len(lines)-1]
		}
		seen := map[int]string{}
		for _, w := range warnings {
			if w.Line < 1 || w.Line > len(lines) || w.Problem == "" || w.Path != "kh" {
				t.Fatalf("warning %+v for %d lines", w, len(lines))
			}
			if seen[w.Line] != "" {
				t.Fatalf("line %d reported twice", w.Line)
			}
			seen[w.Line] = "warning"
		}
		last := 0
		for _, e := range kh.Entries {
			if e.Line <= last || e.Line > len(lines) {
				t.Fatalf("entry at line %d after %d (of %d)", e.Line, last, len(lines))
			}
			last = e.Line
			if seen[e.Line] != "" {
				t.Fatalf("line %d is an entry and a %s", e.Line, seen[e.Line])
			}
			seen[e.Line] = "entry"
			if want := strings.TrimSuffix(lines[e.Line-1], "\r"); e.Text != want || e.Key == nil {
				t.Fatalf("entry of line %d holds %q, the line is %q", e.Line, e.Text, want)
			}
			again, problem := parseKnownHostsLine(e.Text)
			if problem != "" || again == nil || !bytes.Equal(again.Key.Marshal(), e.Key.Marshal()) || again.Marker != e.Marker || again.Hosts != e.Hosts {
				t.Fatalf("line %d does not parse the same again: %q", e.Line, problem)
			}
			_ = e.Matches(name) // terminates, no panic
		}
		for i, l := range lines {
			trimmed := strings.TrimLeft(strings.TrimSuffix(l, "\r"), " \t")
			skip := trimmed == "" || trimmed[0] == '#'
			if skip != (seen[i+1] == "") {
				t.Fatalf("line %d (%q): blank/comment=%v but reported as %q", i+1, l, skip, seen[i+1])
			}
		}
		_ = kh.Lookup(name)
		_ = kh.Hashed()

		p := filepath.Join(dir, "known_hosts")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		rkh, rwarnings, err := ReadKnownHosts(p)
		if err != nil {
			fe, ok := err.(*KnownHostsFileError)
			if !ok || fe.Line < 1 || fe.Line > len(lines)+1 {
				t.Fatalf("ReadKnownHosts error %v (%T) without a line inside the file", err, err)
			}
			return
		}
		if len(rkh.Entries) != len(kh.Entries) || len(rwarnings) != len(warnings) {
			t.Fatalf("ReadKnownHosts: %d entries, %d warnings; ParseKnownHosts: %d, %d",
				len(rkh.Entries), len(rwarnings), len(kh.Entries), len(warnings))
		}
	})
}

// FuzzMarkerFilter: whatever the login environment prints (without the
// per-call marker, which it cannot know), split anywhere, the command's
// output is passed on exactly, and the noise kept is a prefix of what was
// printed.
func FuzzMarkerFilter(f *testing.F) {
	f.Add([]byte("hi\n"), []byte("x86_64\n"), uint16(3))
	f.Add([]byte(""), []byte(""), uint16(0))
	f.Add([]byte("castellan-"), []byte("castellan-0 ok\n"), uint16(7))
	f.Fuzz(func(t *testing.T, noise, out []byte, split uint16) {
		m := newMarker()
		if bytes.Contains(noise, []byte(m)) {
			return
		}
		stream := append(append(append([]byte{}, noise...), m+" ok /bin/sh\n"...), out...)
		at := int(split) % (len(stream) + 1)
		var got bytes.Buffer
		fl := newMarkerFilter(m, &got)
		fl.Write(stream[:at])
		fl.Write(stream[at:])
		fl.finish()
		if !fl.passing || !bytes.Equal(got.Bytes(), out) || fl.shell != "/bin/sh" {
			t.Fatalf("output %q (passing %v, shell %q), want %q", got.Bytes(), fl.passing, fl.shell, out)
		}
		if fl.nNoise != int64(len(noise)) || !bytes.HasPrefix(noise, fl.noise) || len(fl.noise) > maxNoise {
			t.Fatalf("noise %q (%d bytes counted) for %q", fl.noise, fl.nNoise, noise)
		}
	})
}
