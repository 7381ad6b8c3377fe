package profile

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"castellan/installer/localfile"
)

// Size limits of the files a profile names. Each is far above what a real
// file of that kind holds, and small enough to read into memory.
const (
	// MaxKeyFileSize bounds an SSH private key file (an RSA 16384 key is 13 KiB).
	MaxKeyFileSize = 64 << 10
	// MaxKnownHostsSize bounds a known_hosts file (about 100 000 entries).
	MaxKnownHostsSize = 16 << 20
	// MaxCertificateFileSize bounds a PEM file of CA certificates.
	MaxCertificateFileSize = 1 << 20
)

// fileResult is one file read during a validation.
type fileResult struct {
	data []byte
	err  error
}

// read reads the file named by field, once per validation, within
// FileTimeout. It reports nothing and returns false when file checks are off
// or field did not decode; otherwise a read error is returned for the caller
// to report (its text names the path and the reason); checked is false
// when the file was not looked at.
func (v *validator) read(field, file string, maxBytes int64) (data []byte, checked bool, err error) {
	if v.opts.SkipFileChecks || file == "" || v.p.isBad(field) {
		return nil, false, nil
	}
	path := v.p.Resolve(file)
	if r, ok := v.files[path]; ok {
		return r.data, true, r.err
	}
	ctx, cancel := context.WithTimeout(v.ctx, FileTimeout)
	defer cancel()
	data, err = localfile.Read(ctx, path, maxBytes)
	v.files[path] = fileResult{data, err}
	return data, true, err
}

// keyFile checks that file is an SSH private key castellan can use: a
// regular file holding a private key (not a public one); one encrypted with
// a passphrase only with an ssh-agent to hold it, since castellan never
// prompts. Formats: those of ssh.ParseRawPrivateKey (OpenSSH, PKCS#1, PKCS#8,
// SEC1 PEM).
func (v *validator) keyFile(field, file string, agent bool) {
	data, ok, err := v.read(field, file, MaxKeyFileSize)
	if !ok {
		return
	}
	path := v.p.Resolve(file)
	if errors.Is(err, fs.ErrNotExist) {
		v.errf(field, "cannot read key file %v; correct the path, or create the key (ssh-keygen -t ed25519 -f %s) and authorize %s.pub where castellan logs in", err, path, path)
		return
	}
	if err != nil {
		v.errf(field, "cannot read key file %v", err)
		return
	}
	_, err = ssh.ParseRawPrivateKey(data)
	var missing *ssh.PassphraseMissingError
	switch {
	case err == nil:
	case errors.As(err, &missing):
		if !agent {
			v.errf(field, "%s is encrypted with a passphrase, and castellan never prompts for one: load it into ssh-agent (ssh-add %s) and set spec.ssh.agent: true, or use a key file without a passphrase", path, path)
		}
	case isPublicKey(data):
		v.errf(field, "%s holds a public key; keyFile names the private key (the file without .pub)", path)
	default:
		// Never quote the file: it may be a key in a format not read here.
		v.errf(field, "%s is not a private key castellan can read (%s); expected an OpenSSH, PKCS#1, PKCS#8 or SEC1 PEM private key such as ssh-keygen writes", path, keyErr(err))
	}
}

// keyErr says why a key did not parse, without any of the file's content.
func keyErr(err error) string {
	msg := err.Error()
	if _, bad := badRune(msg); bad || len(msg) > 120 {
		return "unreadable"
	}
	return msg
}

func isPublicKey(data []byte) bool {
	if _, _, _, _, err := ssh.ParseAuthorizedKey(data); err == nil {
		return true
	}
	if b, _ := pem.Decode(data); b != nil && strings.HasSuffix(b.Type, "PUBLIC KEY") {
		return true
	}
	return false
}

// agentSocket checks that SSH_AUTH_SOCK names an ssh-agent's socket
// (ssh-agent(1)), since spec.ssh.agent uses it.
func (v *validator) agentSocket(field string) {
	if v.opts.SkipFileChecks || v.p.isBad(field) {
		return
	}
	fix := "start ssh-agent and add the key (ssh-add), or set keyFile"
	if v.p.Spec.SSH.KeyFile != "" {
		fix = "start ssh-agent and add the key (ssh-add), or remove agent: true to use keyFile alone"
	}
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		v.errf(field, "agent: true but SSH_AUTH_SOCK is not set: %s", fix)
		return
	}
	if _, bad := badRune(sock); bad {
		v.errf(field, "agent: true but SSH_AUTH_SOCK holds control characters: %s", fix)
		return
	}
	ctx, cancel := context.WithTimeout(v.ctx, FileTimeout)
	defer cancel()
	st, err := localfile.Stat(ctx, sock)
	switch {
	case err != nil:
		v.errf(field, "agent: true but SSH_AUTH_SOCK cannot be used: %v: %s", err, fix)
	case st.Mode()&fs.ModeSocket == 0:
		v.errf(field, "agent: true but SSH_AUTH_SOCK (%s) is not a socket: %s", sock, fix)
	}
}

// knownHosts checks that file is a known_hosts file (sshd(8), "SSH_KNOWN_HOSTS
// FILE FORMAT"): a regular file in which, unless it is empty, at least one
// line is a host key entry. Lines castellan cannot parse are left to the SSH
// layer, which skips them with a warning. A missing file is allowed when
// missingOK (keys are recorded on first contact).
func (v *validator) knownHosts(field, file string, missingOK bool) {
	data, ok, err := v.read(field, file, MaxKnownHostsSize)
	if !ok {
		return
	}
	path := v.p.Resolve(file)
	switch {
	case errors.Is(err, fs.ErrNotExist) && missingOK:
		return
	case errors.Is(err, fs.ErrNotExist):
		v.errf(field, "cannot read %s: no such file or directory; add the nodes' host keys to it (verified out of band), or run with --accept-new-host-keys to record them on first contact", path)
		return
	case err != nil:
		v.errf(field, "cannot read known_hosts file %v", err)
		return
	}
	entries, firstLine := 0, 0
	for i, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if _, _, _, _, _, err := ssh.ParseKnownHosts(line); err == nil {
			return
		}
		entries++
		if firstLine == 0 {
			firstLine = i + 1
		}
	}
	if entries > 0 {
		v.errf(field, "%s is not a known_hosts file: none of its %d lines is a host key entry such as \"HOST ssh-ed25519 AAAA...\" (line %d is the first)", path, entries, firstLine)
	}
}

// certificates checks that file holds PEM certificates (RFC 7468) and
// nothing secret.
func (v *validator) certificates(field, file string) {
	data, ok, err := v.read(field, file, MaxCertificateFileSize)
	if !ok {
		return
	}
	if err != nil {
		v.errf(field, "cannot read certificate file %v", err)
		return
	}
	path := v.p.Resolve(file)
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case strings.Contains(b.Type, "PRIVATE KEY"):
			v.errf(field, "%s holds a private key; give only the CA certificates", path)
			return
		case b.Type != "CERTIFICATE":
			continue
		}
		n++
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			v.errf(field, "%s: certificate %d does not parse: %s", path, n, keyErr(err))
			return
		}
	}
	if n == 0 {
		v.errf(field, "%s holds no PEM certificate (-----BEGIN CERTIFICATE-----); a DER file converts with: openssl x509 -inform der -in FILE -out FILE.pem", path)
	}
}

// directory checks that dir exists and is a directory.
func (v *validator) directory(field, dir, what string) {
	if v.opts.SkipFileChecks || v.p.isBad(field) {
		return
	}
	ctx, cancel := context.WithTimeout(v.ctx, FileTimeout)
	defer cancel()
	st, err := localfile.Stat(ctx, v.p.Resolve(dir))
	switch {
	case err != nil:
		v.errf(field, "cannot read %s %v", what, err)
	case !st.IsDir():
		v.errf(field, "%s is not a directory", v.p.Resolve(dir))
	}
}

// stateRepo checks the state repo's path on this machine: never a system
// directory or the home directory, where `git init` and the run's commits
// would mix with the system's files; and, if it exists, a directory.
func (v *validator) stateRepo(field, repo string) {
	if v.p.isBad(field) {
		return
	}
	if repo == "" {
		v.errf(field, "expected a directory path, got \"\"; leave repo out for the default %s beside the profile", DefaultStateRepo)
		return
	}
	path := v.p.Resolve(repo)
	if !filepath.IsAbs(path) {
		return // a profile parsed without a directory: nothing to compare
	}
	home, _ := os.UserHomeDir()
	switch sys, inside := systemDir(path, repoSystemDirs, repoSystemTrees); {
	case sys != "" && inside:
		v.errf(field, "%s is inside %s, a system directory; the state repo needs a directory of its own, such as %s beside the profile", path, sys, DefaultStateRepo)
		return
	case sys != "":
		v.errf(field, "%s is a system directory; the state repo needs a directory of its own, such as %s beside the profile", path, DefaultStateRepo)
		return
	case home != "" && path == filepath.Clean(home):
		v.errf(field, "%s is your home directory; the state repo needs a directory of its own, such as %s beside the profile", path, DefaultStateRepo)
		return
	}
	if v.opts.SkipFileChecks {
		return
	}
	ctx, cancel := context.WithTimeout(v.ctx, FileTimeout)
	defer cancel()
	if st, err := localfile.Stat(ctx, path); err == nil && !st.IsDir() {
		v.errf(field, "%s exists and is not a directory", path)
	}
}

// The installer machine's system directories, which the state repo may not
// be: repoSystemDirs exactly, repoSystemTrees nor anything inside them.
var (
	repoSystemDirs = []string{"/", "/etc", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp",
		"/var", "/var/lib", "/var/log", "/var/cache", "/var/tmp", "/var/spool", "/var/lib/castellan"}
	repoSystemTrees = []string{"/bin", "/boot", "/dev", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
		"/run", "/sbin", "/sys", "/usr", "/var/run", "/var/lib/castellan/bin"}
)

// systemDir returns the entry of dirs equal to p, or of trees equal to or
// containing p (inside true when p is strictly inside it), or "".
func systemDir(p string, dirs, trees []string) (dir string, inside bool) {
	for _, t := range trees {
		if p == t {
			return t, false
		}
		if strings.HasPrefix(p, t+"/") {
			return t, true
		}
	}
	for _, d := range dirs {
		if p == d {
			return d, false
		}
	}
	return "", false
}
