package profile

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// edit returns validProfile with each old text replaced by its new one.
func edit(pairs ...string) string { return strings.NewReplacer(pairs...).Replace(validProfile) }

// withDisks gives node a1 the data disks in yaml (a list, indented for it).
func withDisks(disks string) string { return validProfile + "      dataDisks:\n" + disks }

func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
}

// problems loads the profile at path and returns every problem, one per
// line, with the profile's path written cluster.yaml and its directory {dir}.
func problems(t *testing.T, path string) []string {
	t.Helper()
	_, err := Load(path, ValidateOptions{})
	if err == nil {
		return nil
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error is %T, not Errors: %v", err, err)
	}
	var out []string
	for _, e := range errs {
		s := strings.ReplaceAll(e.Error(), path, "cluster.yaml")
		out = append(out, strings.ReplaceAll(s, filepath.Dir(path), "{dir}"))
	}
	return out
}

// hostileCase is a profile that once was accepted, crashed, hung, or lost a
// value (issues 14 and 16), and every problem Load must report for it.
type hostileCase struct {
	name  string
	body  string
	setup func(t *testing.T, dir string) // files beside the profile
	env   map[string]string
	want  []string
}

func runHostile(t *testing.T, tests []hostileCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SSH_AUTH_SOCK", "")
			path := writeProfile(t, tt.body)
			for k, v := range tt.env {
				t.Setenv(k, strings.ReplaceAll(v, "{dir}", filepath.Dir(path)))
			}
			if tt.setup != nil {
				tt.setup(t, filepath.Dir(path))
			}
			got := problems(t, path)
			// HOSTILE_PRINT=1 prints the problems as Go literals, to review
			// and paste when a message changes on purpose.
			if os.Getenv("HOSTILE_PRINT") != "" {
				var q []string
				for _, g := range got {
					q = append(q, "\t\t\t\t"+strconv.Quote(g)+",")
				}
				fmt.Printf("CASE %s\n%s\n", tt.name, strings.Join(q, "\n"))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("problems\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(tt.want, "\n      "))
			}
		})
	}
}

// aliasBomb is issue 16's profile: one netpol workload written once as an
// anchor and repeated by alias, whose openings are aliases of one opening.
func aliasBomb(workloads, openings int) string {
	var b strings.Builder
	b.WriteString(validProfile)
	b.WriteString("  netpol:\n    workloads:\n      - &w\n        name: w\n        namespace: n\n        ingress:\n          o0: &o {podSelector: {app: x}, ports: {80: TCP}}\n")
	for i := 1; i < openings; i++ {
		b.WriteString("          o" + strconv.Itoa(i) + ": *o\n")
	}
	for i := 1; i < workloads; i++ {
		b.WriteString("      - *w\n")
	}
	return b.String()
}

// TestHostileResources: a profile or a file it names can neither exhaust
// memory nor hang validation.
func TestHostileResources(t *testing.T) {
	runHostile(t, []hostileCase{
		{
			name: "alias bomb of 2.4 KB",
			body: aliasBomb(100, 100),
			want: []string{
				"cluster.yaml:138:9: spec.netpol.workloads[16]: alias *w (anchor &w at line 19) expands the profile beyond 10000 values reached through aliases; aliases are bounded so that a small file cannot expand into a huge one: write the repeated values out",
			},
		},
		{
			name:  "keyFile is a FIFO",
			body:  edit("keyFile: id_test", "keyFile: fifo"),
			setup: func(t *testing.T, dir string) { mkfifo(t, filepath.Join(dir, "fifo")) },
			want: []string{
				"cluster.yaml:8:5: spec.ssh.keyFile: cannot read key file {dir}/fifo: is a named pipe (FIFO), not a regular file",
			},
		},
		{
			name: "keyFile is /dev/zero",
			body: edit("keyFile: id_test", "keyFile: /dev/zero"),
			want: []string{
				"cluster.yaml:8:5: spec.ssh.keyFile: cannot read key file /dev/zero: is a character device, not a regular file",
			},
		},
		{
			name:  "knownHosts is a FIFO",
			body:  edit("knownHosts: known_hosts", "knownHosts: fifo"),
			setup: func(t *testing.T, dir string) { mkfifo(t, filepath.Join(dir, "fifo")) },
			want: []string{
				"cluster.yaml:9:5: spec.ssh.knownHosts: cannot read known_hosts file {dir}/fifo: is a named pipe (FIFO), not a regular file",
			},
		},
		{
			name:  "EK CA certificate is a FIFO",
			body:  validProfile + "  identity:\n    ekCACertificates: [fifo]\n",
			setup: func(t *testing.T, dir string) { mkfifo(t, filepath.Join(dir, "fifo")) },
			want: []string{
				"cluster.yaml:18:24: spec.identity.ekCACertificates[0]: cannot read certificate file {dir}/fifo: is a named pipe (FIFO), not a regular file",
			},
		},
		{
			name:  "bastion keyFile is a FIFO",
			body:  edit("    knownHosts: known_hosts\n", "    knownHosts: known_hosts\n    bastion: {address: 192.0.2.9, keyFile: fifo}\n"),
			setup: func(t *testing.T, dir string) { mkfifo(t, filepath.Join(dir, "fifo")) },
			want: []string{
				"cluster.yaml:10:35: spec.ssh.bastion.keyFile: cannot read key file {dir}/fifo: is a named pipe (FIFO), not a regular file",
			},
		},
		{
			name: "state remote keyFile and knownHosts are FIFOs",
			body: validProfile + "  state:\n    remote: {url: \"git@git.example.org:state.git\", keyFile: fifo, knownHosts: fifo2}\n",
			setup: func(t *testing.T, dir string) {
				mkfifo(t, filepath.Join(dir, "fifo"))
				mkfifo(t, filepath.Join(dir, "fifo2"))
			},
			want: []string{
				"cluster.yaml:18:52: spec.state.remote.keyFile: cannot read key file {dir}/fifo: is a named pipe (FIFO), not a regular file",
				"cluster.yaml:18:67: spec.state.remote.knownHosts: cannot read known_hosts file {dir}/fifo2: is a named pipe (FIFO), not a regular file",
			},
		},
		{
			name: "known_hosts too large",
			body: edit("knownHosts: known_hosts", "knownHosts: big"),
			setup: func(t *testing.T, dir string) {
				if err := os.Truncate(filepath.Join(dir, "known_hosts"), 0); err != nil {
					t.Fatal(err)
				}
				f, err := os.Create(filepath.Join(dir, "big"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := f.Truncate(MaxKnownHostsSize + 1); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{
				"cluster.yaml:9:5: spec.ssh.knownHosts: cannot read known_hosts file {dir}/big: is 16777217 bytes, more than the 16 MiB castellan reads; is this the right file?",
			},
		},
	})
}

// TestHostileText: nothing from a profile reaches the terminal or a node with
// control characters, and an IPv6 zone is an interface name.
func TestHostileText(t *testing.T) {
	runHostile(t, []hostileCase{
		{
			name: "IPv6 zone holding a line of fake output",
			body: edit("192.0.2.2", `"fe80::1%x\nok: all nodes ready"`),
			want: []string{
				"cluster.yaml:15:16: spec.nodes[1].address: U+000A (line feed) in \"fe80::1%x\\nok: all nodes ready\": only printable text is accepted, since castellan prints this value and may send it to a node",
			},
		},
		{
			name: "IPv6 zone that is not an interface name",
			body: edit("192.0.2.2", `"fe80::1%eth0;reboot"`),
			want: []string{
				"cluster.yaml:15:7: spec.nodes[1].address: the IPv6 zone \"eth0;reboot\" is not a network interface name (at most 15 letters, digits, '-', '_' or '.'), in \"fe80::1%eth0;reboot\"",
			},
		},
		{
			name: "IPv6 zone that is an interface",
			body: edit("192.0.2.2", `"fe80::1%eth0"`),
			want: nil,
		},
		{
			name: "terminal escape in a label value",
			body: edit("      role: agent\n", "      role: agent\n      labels: {tier: \"\\e[31mred\"}\n"),
			want: []string{
				"cluster.yaml:17:22: spec.nodes[1].labels.tier: U+001B (escape) in \"\\x1b[31mred\": only printable text is accepted, since castellan prints this value and may send it to a node",
			},
		},
		{
			name: "right-to-left override in a node name",
			body: edit("name: a1", `name: "a1\u202e"`),
			want: []string{
				"cluster.yaml:14:13: spec.nodes[1].name: U+202E (right-to-left override) in \"a1\\u202e\": only printable text is accepted, since castellan prints this value and may send it to a node",
			},
		},
		{
			name: "newline in a key file path",
			body: edit("keyFile: id_test", `keyFile: "id_test\nnext"`),
			want: []string{
				"cluster.yaml:8:14: spec.ssh.keyFile: U+000A (line feed) in \"id_test\\nnext\": only printable text is accepted, since castellan prints this value and may send it to a node",
			},
		},
		{
			name: "escape in a Keycloak group name",
			body: validProfile + "  keycloak:\n    groups: [{name: \"ops\\x1b]0;title\\x07\", role: admin}]\n",
			want: []string{
				"cluster.yaml:18:21: spec.keycloak.groups[0].name: U+001B (escape) in \"ops\\x1b]0;title\\a\": only printable text is accepted, since castellan prints this value and may send it to a node",
			},
		},
		{
			name: "control character in a label key",
			body: edit("      role: agent\n", "      role: agent\n      labels: {\"a\\tb\": x}\n"),
			want: []string{
				"cluster.yaml:17:16: spec.nodes[1].labels: U+0009 (tab) in the key \"a\\tb\": only printable text is accepted",
			},
		},
		{
			name: "unspecified address",
			body: edit("192.0.2.2", `"::"`),
			want: []string{
				"cluster.yaml:15:7: spec.nodes[1].address: :: is not the address of one machine; give the node's own address",
			},
		},
	})
}

// TestHostileCoercion: every value is read as written, or refused; nothing
// is silently rounded, defaulted, or read as YAML 1.1.
func TestHostileCoercion(t *testing.T) {
	runHostile(t, []hostileCase{
		{
			name: "port with a fraction",
			body: edit("    user: admin\n", "    user: admin\n    port: 1.99\n"),
			want: []string{
				"cluster.yaml:8:11: spec.ssh.port: expected a whole number, got the number 1.99",
			},
		},
		{
			name: "PCR with a fraction",
			body: validProfile + "  diskEncryption:\n    pcrs: [7.9]\n",
			want: []string{
				"cluster.yaml:18:12: spec.diskEncryption.pcrs[0]: expected a whole number, got the number 7.9",
			},
		},
		{
			name: "port 0",
			body: edit("    user: admin\n", "    user: admin\n    port: 0\n"),
			want: []string{
				"cluster.yaml:8:5: spec.ssh.port: expected a port between 1 and 65535, got 0",
			},
		},
		{
			name: "node port 0",
			body: edit("      role: agent\n", "      role: agent\n      port: 0\n"),
			want: []string{
				"cluster.yaml:17:7: spec.nodes[1].port: expected a port between 1 and 65535, got 0",
			},
		},
		{
			name: "port in hex",
			body: edit("    user: admin\n", "    user: admin\n    port: 0x16\n"),
			want: []string{
				"cluster.yaml:8:11: spec.ssh.port: expected a whole number in decimal, got 0x16; write it in decimal digits",
			},
		},
		{
			name: "port with a leading zero",
			body: edit("    user: admin\n", "    user: admin\n    port: 022\n"),
			want: []string{
				"cluster.yaml:8:11: spec.ssh.port: expected a whole number without leading zeros, got 022: YAML 1.1 reads it as octal, YAML 1.2 as decimal; write 22",
			},
		},
		{
			name: "port quoted",
			body: edit("    user: admin\n", "    user: admin\n    port: \"22\"\n"),
			want: []string{
				"cluster.yaml:8:11: spec.ssh.port: expected a whole number, got the quoted text \"22\"; remove the quotes",
			},
		},
		{
			name: "port with digit separators",
			body: edit("    user: admin\n", "    user: admin\n    port: 2_2\n"),
			want: []string{
				"cluster.yaml:8:11: spec.ssh.port: expected a whole number in decimal digits, got \"2_2\" (a number in YAML 1.1, text in YAML 1.2); write it as plain digits",
			},
		},
		{
			name: "port too large for any integer",
			body: edit("    user: admin\n", "    user: admin\n    port: 99999999999999999999\n"),
			want: []string{
				"cluster.yaml:8:11: spec.ssh.port: the number \"99999999999999999999\" is out of range",
			},
		},
		{
			name: "ports equal by value",
			body: validProfile + "  netpol:\n    workloads:\n      - name: api\n        namespace: apps\n        ingress:\n          web:\n            podSelector: {app: web}\n            ports: {80: TCP, \"+80\": UDP, 080: SCTP}\n",
			want: []string{
				"cluster.yaml:24:30: spec.netpol.workloads[0].ingress.web.ports.+80: 80 appears twice: \"+80\" here and \"80\" at line 24",
				"cluster.yaml:24:42: spec.netpol.workloads[0].ingress.web.ports.080: expected a whole number as key without leading zeros, got 080: YAML 1.1 reads it as octal, YAML 1.2 as decimal; write 80",
			},
		},
		{
			name: "allowFormat: y",
			body: withDisks("        - {device: /dev/vdb, allowFormat: y}\n"),
			want: []string{
				"cluster.yaml:18:43: spec.nodes[1].dataDisks[0].allowFormat: expected true or false, got \"y\": YAML 1.2 reads it as text (YAML 1.1 read it as a boolean); write true or false",
			},
		},
		{
			name: "enabled: off",
			body: validProfile + "  mesh:\n    enabled: off\n",
			want: []string{
				"cluster.yaml:18:14: spec.mesh.enabled: expected true or false, got \"off\": YAML 1.2 reads it as text (YAML 1.1 read it as a boolean); write true or false",
			},
		},
		{
			name: "sudo: yes",
			body: edit("    user: admin\n", "    user: admin\n    sudo: yes\n"),
			want: []string{
				"cluster.yaml:8:11: spec.ssh.sudo: expected true or false, got \"yes\": YAML 1.2 reads it as text (YAML 1.1 read it as a boolean); write true or false",
			},
		},
		{
			name: "boolean quoted",
			body: edit("    user: admin\n", "    user: admin\n    sudo: \"false\"\n"),
			want: []string{
				"cluster.yaml:8:11: spec.ssh.sudo: expected true or false, got the quoted text \"false\"",
			},
		},
		{
			name: "binary tag",
			body: edit("    user: admin\n", "    user: !!binary YWRtaW4=\n"),
			want: []string{
				"cluster.yaml:7:11: spec.ssh.user: explicit tags such as !!binary are not accepted; write the value without a tag",
			},
		},
		{
			name: "str tag",
			body: edit("name: a1", "name: !!str a1"),
			want: []string{
				"cluster.yaml:14:13: spec.nodes[1].name: explicit tags such as !!str are not accepted; write the value without a tag",
			},
		},
		{
			name: "custom tag on a mapping",
			body: validProfile + "  mesh: !thing {port: 51900}\n",
			want: []string{
				"cluster.yaml:17:9: spec.mesh: explicit tags such as !thing are not accepted; write the value without a tag",
			},
		},
		{
			name: "calico mtu 0",
			body: validProfile + "  calico:\n    mtu: 0\n",
			want: []string{
				"cluster.yaml:18:5: spec.calico.mtu: expected an MTU between 1280 and 9000 bytes, got 0; leave mtu out to derive it from the underlay",
			},
		},
		{
			name: "calico mtu too large",
			body: validProfile + "  calico:\n    mtu: 100000\n",
			want: []string{
				"cluster.yaml:18:5: spec.calico.mtu: expected an MTU between 1280 and 9000 bytes, got 100000; leave mtu out to derive it from the underlay",
			},
		},
		{
			name: "calico mtu in range",
			body: validProfile + "  calico:\n    mtu: 1400\n",
			want: nil,
		},
		{
			name: "connectTimeout 0s",
			body: edit("    user: admin\n", "    user: admin\n    connectTimeout: 0s\n"),
			want: []string{
				"cluster.yaml:8:21: spec.ssh.connectTimeout: expected a duration such as 30s or 5m, more than zero; got \"0s\" (leave it out for the default)",
			},
		},
		{
			name: "empty PCR list",
			body: validProfile + "  diskEncryption:\n    pcrs: []\n",
			want: []string{
				"cluster.yaml:18:5: spec.diskEncryption.pcrs: an empty list would bind the disks' TPM keyslot to no PCR, so any boot chain unlocks them; name PCRs, or leave pcrs out for the default [7]",
			},
		},
		{
			name: "recovery generation zero",
			body: validProfile + "  diskEncryption:\n    recoveryGeneration: 0\n",
			want: []string{
				"cluster.yaml:18:5: spec.diskEncryption.recoveryGeneration: expected a generation of 1 or more, got 0; raise it by one to rotate every data disk's recovery passphrase",
			},
		},
		{
			name: "YAML 1.2 core booleans in capitals",
			body: edit("    user: admin\n", "    user: admin\n    sudo: True\n    agent: FALSE\n"),
			want: nil,
		},
		{
			name: "CRLF line endings keep positions",
			body: strings.ReplaceAll(edit("    user: admin\n", "    user: admin\n    port: 1.99\n"), "\n", "\r\n"),
			want: []string{
				"cluster.yaml:8:11: spec.ssh.port: expected a whole number, got the number 1.99",
			},
		},
		{
			name: "null port keeps the default",
			body: edit("    user: admin\n", "    user: admin\n    port: ~\n"),
			want: nil,
		},
	})
}

// TestHostileValidateFindsWhatPlanFinds: the files and the agent socket the
// SSH layer will use are checked by validate, with the field's position.
func TestHostileValidateFindsWhatPlanFinds(t *testing.T) {
	runHostile(t, []hostileCase{
		{
			name:  "keyFile is a directory",
			body:  edit("keyFile: id_test", "keyFile: keys"),
			setup: func(t *testing.T, dir string) { os.Mkdir(filepath.Join(dir, "keys"), 0o700) },
			want: []string{
				"cluster.yaml:8:5: spec.ssh.keyFile: cannot read key file {dir}/keys: is a directory, not a regular file",
			},
		},
		{
			name:  "keyFile is a public key",
			body:  edit("keyFile: id_test", "keyFile: id_test.pub"),
			setup: func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "id_test.pub"), testPublicKey(t)) },
			want: []string{
				"cluster.yaml:8:5: spec.ssh.keyFile: {dir}/id_test.pub holds a public key; keyFile names the private key (the file without .pub)",
			},
		},
		{
			name: "keyFile is not a key",
			body: edit("keyFile: id_test", "keyFile: notes.txt"),
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "notes.txt"), []byte("secret notes\n"))
			},
			want: []string{
				"cluster.yaml:8:5: spec.ssh.keyFile: {dir}/notes.txt is not a private key castellan can read (ssh: no key found); expected an OpenSSH, PKCS#1, PKCS#8 or SEC1 PEM private key such as ssh-keygen writes",
			},
		},
		{
			name:  "keyFile encrypted and no agent",
			body:  edit("keyFile: id_test", "keyFile: id_enc"),
			setup: func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "id_enc"), testKey(t, "pass")) },
			want: []string{
				"cluster.yaml:8:5: spec.ssh.keyFile: {dir}/id_enc is encrypted with a passphrase, and castellan never prompts for one: load it into ssh-agent (ssh-add {dir}/id_enc) and set spec.ssh.agent: true, or use a key file without a passphrase",
			},
		},
		{
			name: "keyFile encrypted, agent: true, agent running",
			body: edit("keyFile: id_test", "keyFile: id_enc\n    agent: true"),
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "id_enc"), testKey(t, "pass"))
				listenUnix(t, filepath.Join(dir, "agent.sock"))
			},
			env:  map[string]string{"SSH_AUTH_SOCK": "{dir}/agent.sock"},
			want: nil,
		},
		{
			name:  "knownHosts is a directory",
			body:  edit("knownHosts: known_hosts", "knownHosts: hosts.d"),
			setup: func(t *testing.T, dir string) { os.Mkdir(filepath.Join(dir, "hosts.d"), 0o700) },
			want: []string{
				"cluster.yaml:9:5: spec.ssh.knownHosts: cannot read known_hosts file {dir}/hosts.d: is a directory, not a regular file",
			},
		},
		{
			name: "knownHosts is not a known_hosts file",
			body: edit("knownHosts: known_hosts", "knownHosts: id_test"),
			want: []string{
				"cluster.yaml:9:5: spec.ssh.knownHosts: {dir}/id_test is not a known_hosts file: none of its 7 lines is a host key entry such as \"HOST ssh-ed25519 AAAA...\" (line 1 is the first)",
			},
		},
		{
			name: "knownHosts with one good line among bad ones",
			body: edit("knownHosts: known_hosts", "knownHosts: mixed"),
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "mixed"), append([]byte("garbage line\n[2001:db8::7] "), testPublicKey(t)...))
			},
			want: nil,
		},
		{
			name:  "empty knownHosts",
			body:  edit("knownHosts: known_hosts", "knownHosts: empty"),
			setup: func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "empty"), nil) },
			want:  nil,
		},
		{
			name: "agent: true with keyFile and no SSH_AUTH_SOCK",
			body: edit("keyFile: id_test", "keyFile: id_test\n    agent: true"),
			want: []string{
				"cluster.yaml:9:5: spec.ssh.agent: agent: true but SSH_AUTH_SOCK is not set: start ssh-agent and add the key (ssh-add), or remove agent: true to use keyFile alone",
			},
		},
		{
			name: "SSH_AUTH_SOCK that is not a socket",
			body: edit("keyFile: id_test", "agent: true"),
			env:  map[string]string{"SSH_AUTH_SOCK": "{dir}/known_hosts"},
			want: []string{
				"cluster.yaml:8:5: spec.ssh.agent: agent: true but SSH_AUTH_SOCK ({dir}/known_hosts) is not a socket: start ssh-agent and add the key (ssh-add), or set keyFile",
			},
		},
		{
			name: "EK CA file that holds no certificate",
			body: validProfile + "  identity:\n    ekCACertificates: [known_hosts]\n",
			want: []string{
				"cluster.yaml:18:24: spec.identity.ekCACertificates[0]: {dir}/known_hosts holds no PEM certificate (-----BEGIN CERTIFICATE-----); a DER file converts with: openssl x509 -inform der -in FILE -out FILE.pem",
			},
		},
		{
			name: "artifactsDir that is a file",
			body: validProfile + "  rke2:\n    artifacts: airgap\n    artifactsDir: known_hosts\n",
			want: []string{
				"cluster.yaml:19:5: spec.rke2.artifactsDir: {dir}/known_hosts is not a directory",
			},
		},
	})
}

func listenUnix(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
}

// TestHostileMessages: every problem has a position, and all of them are
// reported in one round.
func TestHostileMessages(t *testing.T) {
	runHostile(t, []hostileCase{
		{
			name: "non-UTF-8 byte on line 1",
			body: "apiVersion: castellan/v1\xffalpha1\n" + validProfile[strings.Index(validProfile, "\n")+1:],
			want: []string{
				"cluster.yaml:1:25: byte 0xFF is not UTF-8; save the profile as UTF-8",
			},
		},
		{
			name: "NUL on line 1",
			body: "apiVersion: castellan\x00/v1alpha1\n" + validProfile[strings.Index(validProfile, "\n")+1:],
			want: []string{
				"cluster.yaml:1:22: U+0000 (NUL) in the profile: YAML allows only printable characters; remove it (write it as an escape inside double quotes if you really mean it)",
			},
		},
		{
			name: "NUL later",
			body: edit("name: a1", "name: a\x001"),
			want: []string{
				"cluster.yaml:14:14: U+0000 (NUL) in the profile: YAML allows only printable characters; remove it (write it as an escape inside double quotes if you really mean it)",
			},
		},
		{
			name: "nesting too deep on line 1",
			body: "apiVersion: " + strings.Repeat("[", 10001) + "\n",
			want: []string{
				"cluster.yaml:1:10013: YAML nesting deeper than 10000 levels; is this the right file?",
			},
		},
		{
			name: "tab indentation",
			body: edit("    knownHosts: known_hosts\n", "\tknownHosts: known_hosts\n"),
			want: []string{
				"cluster.yaml:9:1: tab character in the indentation: YAML indents with spaces only; replace the tab with spaces",
			},
		},
		{
			name: "tab indentation in a list",
			body: edit("      role: agent\n", "\t  role: agent\n"),
			want: []string{
				"cluster.yaml:16:1: tab character in the indentation: YAML indents with spaces only; replace the tab with spaces",
			},
		},
		{
			name: "unknown anchor",
			body: edit("name: a1", "name: *nothing"),
			want: []string{
				"cluster.yaml:14:13: alias *nothing refers to no anchor &nothing written before it",
			},
		},
		{
			name: "syntax error on line 1",
			body: "apiVersion: a: b\n",
			want: []string{
				"cluster.yaml:1: YAML syntax: mapping values are not allowed in this context",
			},
		},
		{
			name: "parser error points at its line",
			body: edit("      role: agent\n", "      role: agent\n     bad: x\n"),
			want: []string{
				"cluster.yaml:17: YAML syntax: did not find expected '-' indicator",
			},
		},
		{
			name: "type errors do not hide the other checks",
			body: validProfile + "  netpol:\n    workloads:\n      - name: api\n        namespace: apps\n        ingress:\n          web:\n            podSelector: {app: web}\n            ports: {22abc: TCP, 0: TCP, 65536: TCP, -1: UDP}\n",
			want: []string{
				"cluster.yaml:24:21: spec.netpol.workloads[0].ingress.web.ports.22abc: expected a whole number as key, got the text \"22abc\"",
				"cluster.yaml:24:33: spec.netpol.workloads[0].ingress.web.ports.0: expected a port between 1 and 65535, got 0",
				"cluster.yaml:24:41: spec.netpol.workloads[0].ingress.web.ports.65536: expected a port between 1 and 65535, got 65536",
				"cluster.yaml:24:53: spec.netpol.workloads[0].ingress.web.ports.-1: expected a port between 1 and 65535, got -1",
			},
		},
		{
			name: "type error and semantic errors together",
			body: edit("    user: admin\n", "    user: Admin\n    port: ssh\n", "role: agent", "role: worker"),
			want: []string{
				"cluster.yaml:7:5: spec.ssh.user: expected a user name (lowercase letters, digits, '_' and '-'), got \"Admin\"",
				"cluster.yaml:8:11: spec.ssh.port: expected a whole number, got the text \"ssh\"",
				"cluster.yaml:17:7: spec.nodes[1].role: expected server or agent, got \"worker\"",
			},
		},
		{
			name: "misspelt field is not also missing",
			body: edit("knownHosts:", "knownhosts:"),
			want: []string{
				"cluster.yaml:9:5: spec.ssh: unknown field \"knownhosts\"; expected one of: knownHosts, user, port, keyFile, agent, sudo, bastion, connectTimeout, commandTimeout",
			},
		},
	})
}

// TestHostileDisks: a data disk's device and mount point are checked as far
// as text allows (issue 14 §5); the node checks the rest in preflight.
func TestHostileDisks(t *testing.T) {
	runHostile(t, []hostileCase{
		{
			name: "partition of a virtio disk",
			body: withDisks("        - device: /dev/vdb1\n"),
			want: []string{
				"cluster.yaml:18:11: spec.nodes[1].dataDisks[0].device: /dev/vdb1 is partition 1 of vdb: name the whole disk, /dev/vdb (castellan encrypts whole disks)",
			},
		},
		{
			name: "partition of an NVMe disk",
			body: withDisks("        - device: /dev/nvme0n1p1\n"),
			want: []string{
				"cluster.yaml:18:11: spec.nodes[1].dataDisks[0].device: /dev/nvme0n1p1 is partition 1 of nvme0n1: name the whole disk, /dev/nvme0n1 (castellan encrypts whole disks)",
			},
		},
		{
			name: "partition of a SCSI disk",
			body: withDisks("        - device: /dev/sda1\n"),
			want: []string{
				"cluster.yaml:18:11: spec.nodes[1].dataDisks[0].device: /dev/sda1 is partition 1 of sda: name the whole disk, /dev/sda (castellan encrypts whole disks)",
			},
		},
		{
			name: "partition by id",
			body: withDisks("        - device: /dev/disk/by-id/virtio-data1-part2\n"),
			want: []string{
				"cluster.yaml:18:11: spec.nodes[1].dataDisks[0].device: /dev/disk/by-id/virtio-data1-part2 is partition 2 of /dev/disk/by-id/virtio-data1: name the whole disk, /dev/disk/by-id/virtio-data1 (castellan encrypts whole disks)",
			},
		},
		{
			name: "whole disk by id ending in digits",
			body: withDisks("        - device: /dev/disk/by-id/wwn-0x5000c500a1b2c3d4\n"),
			want: nil,
		},
		{
			name: "filesystem by uuid",
			body: withDisks("        - device: /dev/disk/by-uuid/0b3c5a1e-1f7a-4c8e-9d0a-3b2f6e7d8c91\n"),
			want: []string{
				"cluster.yaml:18:11: spec.nodes[1].dataDisks[0].device: /dev/disk/by-uuid/0b3c5a1e-1f7a-4c8e-9d0a-3b2f6e7d8c91 names a filesystem, which formatting replaces, so the name would not survive the first run; name the disk by /dev/disk/by-id/...",
			},
		},
		{
			name: "one disk written three ways",
			body: withDisks("        - device: /dev/vdb\n        - device: /dev/vdb/\n          mountPoint: /data/b\n        - device: /dev//vdb\n          mountPoint: /data/c\n"),
			want: []string{
				"cluster.yaml:19:11: spec.nodes[1].dataDisks[1].device: \"/dev/vdb/\" is /dev/vdb, the same disk as dataDisks[0] (/dev/vdb)",
				"cluster.yaml:21:11: spec.nodes[1].dataDisks[2].device: \"/dev//vdb\" is /dev/vdb, the same disk as dataDisks[0] (/dev/vdb)",
			},
		},
		{
			name: "not disks",
			body: withDisks("        - device: /dev/stdin\n        - device: /dev/shm/x\n        - device: /dev/mem\n        - device: /dev/fd/0\n        - device: /dev/null\n        - device: /dev/zero\n        - device: /dev/tty1\n        - device: /dev/ram0\n"),
			want: []string{
				"cluster.yaml:18:11: spec.nodes[1].dataDisks[0].device: /dev/stdin is the standard input, not a data disk; name a whole disk such as /dev/vdb or /dev/disk/by-id/...",
				"cluster.yaml:19:11: spec.nodes[1].dataDisks[1].device: /dev/shm/x is shared memory (a tmpfs), not a data disk; name a whole disk such as /dev/vdb or /dev/disk/by-id/...",
				"cluster.yaml:20:11: spec.nodes[1].dataDisks[2].device: /dev/mem is physical memory, not a data disk; name a whole disk such as /dev/vdb or /dev/disk/by-id/...",
				"cluster.yaml:21:11: spec.nodes[1].dataDisks[3].device: /dev/fd/0 is a file descriptor of the running process, not a data disk; name a whole disk such as /dev/vdb or /dev/disk/by-id/...",
				"cluster.yaml:22:11: spec.nodes[1].dataDisks[4].device: /dev/null is the null device, not a data disk; name a whole disk such as /dev/vdb or /dev/disk/by-id/...",
				"cluster.yaml:23:11: spec.nodes[1].dataDisks[5].device: /dev/zero is the zero device, not a data disk; name a whole disk such as /dev/vdb or /dev/disk/by-id/...",
				"cluster.yaml:24:11: spec.nodes[1].dataDisks[6].device: /dev/tty1 is a terminal, not a data disk; name a whole disk such as /dev/vdb or /dev/disk/by-id/...",
				"cluster.yaml:25:11: spec.nodes[1].dataDisks[7].device: /dev/ram0 is a RAM disk (its data is lost at reboot), not a data disk; name a whole disk such as /dev/vdb or /dev/disk/by-id/...",
			},
		},
		{
			name: "mount points in system directories",
			body: withDisks("        - {device: /dev/vdb, mountPoint: /etc/ssh}\n        - {device: /dev/vdc, mountPoint: /bin}\n        - {device: /dev/vdd, mountPoint: /root/.ssh}\n        - {device: /dev/vde, mountPoint: /var/lib/castellan/bin}\n        - {device: /dev/vdf, mountPoint: /}\n        - {device: /dev/vdg, mountPoint: /proc/x}\n        - {device: /dev/vdh, mountPoint: /boot}\n        - {device: /dev/vdi, mountPoint: /usr/local/data}\n        - {device: /dev/vdj, mountPoint: /home/admin/.ssh}\n        - {device: /dev/vdk, mountPoint: /var/lib/castellan/data}\n"),
			want: []string{
				"cluster.yaml:18:30: spec.nodes[1].dataDisks[0].mountPoint: /etc/ssh is inside /etc, a system directory; choose a dedicated path such as /var/lib/castellan/data/vdb",
				"cluster.yaml:19:30: spec.nodes[1].dataDisks[1].mountPoint: /bin is a system directory; choose a dedicated path such as /var/lib/castellan/data/vdc",
				"cluster.yaml:20:30: spec.nodes[1].dataDisks[2].mountPoint: /root/.ssh is inside /root, a system directory; choose a dedicated path such as /var/lib/castellan/data/vdd",
				"cluster.yaml:21:30: spec.nodes[1].dataDisks[3].mountPoint: /var/lib/castellan/bin is inside /var/lib/castellan, castellan's own directory (its agent lives there); choose a dedicated path such as /var/lib/castellan/data/vde",
				"cluster.yaml:22:30: spec.nodes[1].dataDisks[4].mountPoint: / is a system directory; choose a dedicated path such as /var/lib/castellan/data/vdf",
				"cluster.yaml:23:30: spec.nodes[1].dataDisks[5].mountPoint: /proc/x is inside /proc, a system directory; choose a dedicated path such as /var/lib/castellan/data/vdg",
				"cluster.yaml:24:30: spec.nodes[1].dataDisks[6].mountPoint: /boot is a system directory; choose a dedicated path such as /var/lib/castellan/data/vdh",
				"cluster.yaml:25:30: spec.nodes[1].dataDisks[7].mountPoint: /usr/local/data is inside /usr, a system directory; choose a dedicated path such as /var/lib/castellan/data/vdi",
				"cluster.yaml:26:30: spec.nodes[1].dataDisks[8].mountPoint: /home/admin/.ssh is inside a directory of keys (.ssh, .gnupg); choose a dedicated path such as /var/lib/castellan/data/vdj",
				"cluster.yaml:27:30: spec.nodes[1].dataDisks[9].mountPoint: /var/lib/castellan/data holds the mount points of castellan's data disks; choose one inside it, such as /var/lib/castellan/data/vdk",
			},
		},
		{
			name: "mount point with a control character",
			body: withDisks("        - {device: /dev/vdb, mountPoint: \"/data/\\x1b[2J\"}\n"),
			want: []string{
				"cluster.yaml:18:42: spec.nodes[1].dataDisks[0].mountPoint: U+001B (escape) in \"/data/\\x1b[2J\": only printable text is accepted, since castellan prints this value and may send it to a node",
			},
		},
		{
			name: "good disks",
			body: withDisks("        - device: /dev/vdb\n        - {device: /dev/nvme1n1, mountPoint: /srv/data}\n        - {device: /dev/disk/by-id/virtio-data2, mountPoint: /var/lib/rancher}\n"),
			want: nil,
		},
	})
}

// TestHostileStateRepo: the state repo is never a system directory.
func TestHostileStateRepo(t *testing.T) {
	runHostile(t, []hostileCase{
		{
			name: "root",
			body: validProfile + "  state:\n    repo: /\n",
			want: []string{
				"cluster.yaml:18:5: spec.state.repo: / is a system directory; the state repo needs a directory of its own, such as state beside the profile",
			},
		},
		{
			name: "etc",
			body: validProfile + "  state:\n    repo: /etc\n",
			want: []string{
				"cluster.yaml:18:5: spec.state.repo: /etc is a system directory; the state repo needs a directory of its own, such as state beside the profile",
			},
		},
		{
			name: "inside usr",
			body: validProfile + "  state:\n    repo: /usr/lib/castellan-state\n",
			want: []string{
				"cluster.yaml:18:5: spec.state.repo: /usr/lib/castellan-state is inside /usr, a system directory; the state repo needs a directory of its own, such as state beside the profile",
			},
		},
		{
			name: "relative path climbing to root",
			body: validProfile + "  state:\n    repo: ../../../../../../../../../..\n",
			want: []string{
				"cluster.yaml:18:5: spec.state.repo: / is a system directory; the state repo needs a directory of its own, such as state beside the profile",
			},
		},
		{
			name: "a file",
			body: validProfile + "  state:\n    repo: known_hosts\n",
			want: []string{
				"cluster.yaml:18:5: spec.state.repo: {dir}/known_hosts exists and is not a directory",
			},
		},
		{
			name: "beside the profile",
			body: validProfile + "  state:\n    repo: cluster-state\n",
			want: nil,
		},
	})
}

// TestAliasBombLarge is issue 16's 23 KB profile, which exhausted memory and
// killed the runtime: it stops at the bound, early, naming the alias.
func TestAliasBombLarge(t *testing.T) {
	body := aliasBomb(1000, 1000)
	if len(body) < 20<<10 {
		t.Fatalf("the bomb is %d bytes, want the issue's 23 KB", len(body))
	}
	got := problems(t, writeProfile(t, body))
	want := []string{"cluster.yaml:1023:9: spec.netpol.workloads[1]: alias *w (anchor &w at line 19) expands the profile beyond 10000 values reached through aliases; aliases are bounded so that a small file cannot expand into a huge one: write the repeated values out"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}
}

// TestProfileNotARegularFile: the profile itself is read like every other
// file: a FIFO or a device is refused at once, naming the path.
func TestProfileNotARegularFile(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "cluster.yaml")
	mkfifo(t, fifo)
	for path, want := range map[string]string{
		fifo:        "reading profile: " + fifo + ": is a named pipe (FIFO), not a regular file",
		"/dev/zero": "reading profile: /dev/zero: is a character device, not a regular file",
		"/":         "reading profile: /: is a directory, not a regular file",
	} {
		_, err := Load(path, ValidateOptions{})
		if err == nil || err.Error() != want {
			t.Errorf("Load(%s) = %v; want %s", path, err, want)
		}
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	writeFile(t, big, []byte(strings.Repeat("# comment\n", MaxProfileSize/10+1)))
	if _, err := Load(big, ValidateOptions{}); err == nil || !strings.Contains(err.Error(), "is larger than 512 KiB") && !strings.Contains(err.Error(), "more than the 512 KiB") {
		t.Errorf("Load(big) = %v", err)
	}
}

// TestUnprintableNeverPrinted: whatever a value holds, the error text holds
// no control or format character, only its escape.
func TestUnprintableNeverPrinted(t *testing.T) {
	e := &FieldError{File: "c\x1b.yaml", Pos: Pos{1, 2}, Path: "a.b\u202e", Msg: "got \x07 and \u2028"}
	if got, want := e.Error(), `c\x1b.yaml:1:2: a.b\u202e: got \a and \u2028`; got != want {
		t.Errorf("Error() = %s; want %s", got, want)
	}
}

// TestPosition: the position lookup the installer uses for problems found
// outside this package.
func TestPosition(t *testing.T) {
	p, err := Load(writeProfile(t, validProfile), ValidateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string]string{
		"spec.ssh.keyFile":           "8:5",
		"spec.nodes[1].address":      "15:7",
		"spec.nodes[1]":              "14:7",
		"spec.nodes[1].port":         "14:7", // defaulted: its node
		"spec.mesh.subnet":           "5:1",  // defaulted: spec
		"spec.nodes[7].name":         "10:3", // no such node: the list
		"":                           "1:1",
		"spec.ssh.bastion.address":   "6:3",
		"spec.diskEncryption.pcrs":   "5:1",
		"spec.nodes[0].dataDisks[0]": "11:7",
	} {
		if got := p.Position(field).String(); got != want {
			t.Errorf("Position(%q) = %s, want %s", field, got, want)
		}
	}
	if !p.Written("spec.ssh.keyFile") || p.Written("spec.ssh.port") {
		t.Errorf("Written: keyFile %v, port %v", p.Written("spec.ssh.keyFile"), p.Written("spec.ssh.port"))
	}
	got := p.Errorf("spec.nodes[1].address", "host key changed").Error()
	if want := p.File + ":15:7: spec.nodes[1].address: host key changed"; got != want {
		t.Errorf("Errorf = %s, want %s", got, want)
	}
}
