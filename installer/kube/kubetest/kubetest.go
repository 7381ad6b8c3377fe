// Package kubetest runs a real kube-apiserver with its etcd on loopback for
// tests: the upstream binaries, built from Go modules by
// test/kube-apiserver/build.sh (`make kube-apiserver`) and cached outside the
// repository under $CASTELLAN_CACHE (default ~/.cache/castellan)/kube-apiserver/KEY/,
// where KEY is the Kubernetes version, the Go version and a hash of the build
// module (CacheKey).
//
// Start gives a test a fresh etcd (its own data directory, random loopback
// ports) and API server (its own CA, serving and client certificates,
// service-account keys, RBAC authorization), waits until the server is
// ready, and stops both when the test ends. The API server's validation,
// defaulting, admission and server-side apply are the real ones, which is
// the point: a test that applies objects to it checks them as a cluster would.
//
// A missing binary skips the test, except under CI=true or
// CASTELLAN_REQUIRE_REAL_PEERS=1, where it fails.
package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// buildModule is the Go module that builds the binaries, relative to the
// repository's root.
const buildModule = "test/kube-apiserver"

// Binaries are the paths of the two programs.
type Binaries struct {
	Dir           string
	KubeAPIServer string
	Etcd          string
}

// ErrNotBuilt means the binaries are not in the cache.
var ErrNotBuilt = errors.New("kube-apiserver and etcd are not built")

// FindBinaries locates the cached binaries: $CASTELLAN_KUBE_APISERVER_DIR
// if set (a directory holding kube-apiserver and etcd), else the cache entry
// of CacheKey for the build module of the repository around the working
// directory. Errors wrap ErrNotBuilt with how to build them.
func FindBinaries() (Binaries, error) {
	dir := os.Getenv("CASTELLAN_KUBE_APISERVER_DIR")
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			return Binaries{}, err
		}
		key, err := CacheKey(filepath.Join(root, buildModule))
		if err != nil {
			return Binaries{}, err
		}
		dir = filepath.Join(cacheDir(), "kube-apiserver", key)
	}
	b := Binaries{Dir: dir, KubeAPIServer: filepath.Join(dir, "kube-apiserver"), Etcd: filepath.Join(dir, "etcd")}
	for _, f := range []string{b.KubeAPIServer, b.Etcd} {
		if fi, err := os.Stat(f); err != nil || fi.Mode()&0o111 == 0 {
			return b, fmt.Errorf("%w: %s is missing; run `make kube-apiserver` (test/kube-apiserver/build.sh; about 16 minutes cold)", ErrNotBuilt, f)
		}
	}
	return b, nil
}

func cacheDir() string {
	if d := os.Getenv("CASTELLAN_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "castellan-cache")
	}
	return filepath.Join(home, ".cache", "castellan")
}

// repoRoot is the nearest directory above the working directory whose
// go.mod declares module castellan.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(data), []byte("module castellan\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("kubetest: no castellan module above the working directory; set CASTELLAN_KUBE_APISERVER_DIR")
		}
		dir = parent
	}
}

// CacheKey is the cache entry name build.sh uses for the build module in
// dir: KUBEVERSION-GOVERSION-HASH, HASH being the first 12 hex digits of the
// SHA-256 of sha256sum(1)'s output for the module's go.mod, go.sum, *.go
// files and build.sh, sorted by path as `LC_ALL=C sort` does.
func CacheKey(dir string) (string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.Type().IsRegular() && (strings.HasSuffix(name, ".go") || name == "go.mod" || name == "go.sum" || name == "build.sh") {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			files = append(files, "./"+filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("kubetest: hashing the build module: %w", err)
	}
	slices.Sort(files) // byte order, as LC_ALL=C sort
	var sums bytes.Buffer
	version := ""
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&sums, "%x  %s\n", sha256.Sum256(data), f)
		if f == "./go.mod" {
			sc := bufio.NewScanner(bytes.NewReader(data))
			for sc.Scan() {
				if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == "k8s.io/kubernetes" {
					version = fields[1]
					break
				}
			}
		}
	}
	if version == "" {
		return "", errors.New("kubetest: the build module's go.mod requires no k8s.io/kubernetes")
	}
	h := sha256.Sum256(sums.Bytes())
	return fmt.Sprintf("%s-%s-%s", version, runtime.Version(), hex.EncodeToString(h[:])[:12]), nil
}

// requireReal reports whether a missing peer must fail the test.
func requireReal() bool {
	return os.Getenv("CI") == "true" || os.Getenv("CASTELLAN_REQUIRE_REAL_PEERS") == "1"
}

// Server is a running etcd and kube-apiserver.
type Server struct {
	// Config is an admin client configuration (user castellan-test-admin in
	// group system:masters) for https://127.0.0.1:PORT.
	Config *rest.Config
	// Dir holds the certificates, keys, etcd's data and both logs.
	Dir string
	// StartTime is how long etcd and the API server took to become ready.
	StartTime time.Duration

	ca      *authority
	etcd    *process
	apiserv *process
}

// Options change what Start runs.
type Options struct {
	// ExtraFlags are appended to the kube-apiserver's flags (e.g. --feature-gates=...).
	ExtraFlags []string
}

// Start runs etcd and kube-apiserver for the test and stops them when it ends.
func Start(t testing.TB, opts ...Options) *Server {
	t.Helper()
	bins, err := FindBinaries()
	if err != nil {
		if requireReal() {
			t.Fatalf("kube-apiserver tier: %v", err)
		}
		t.Skipf("kube-apiserver tier: %v", err)
	}
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := New(ctx, bins, t.TempDir(), o)
	if err != nil {
		t.Fatalf("kube-apiserver tier: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping kube-apiserver tier: %v", err)
		}
	})
	t.Logf("etcd and kube-apiserver ready in %v at %s", s.StartTime.Round(time.Millisecond), s.Config.Host)
	return s
}

// New starts etcd and kube-apiserver with files in dir (which must exist
// and stay until Stop) and waits until the API server is ready, ctx bounding
// the wait. Up to three tries pick other random ports if one was taken in
// between. On error nothing is left running.
func New(ctx context.Context, bins Binaries, dir string, o Options) (*Server, error) {
	start := time.Now()
	ca, err := newAuthority(dir)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for try := 1; try <= 3; try++ {
		s := &Server{Dir: dir, ca: ca}
		lastErr = s.start(ctx, bins, o, try)
		if lastErr == nil {
			s.StartTime = time.Since(start)
			return s, nil
		}
		_ = s.Stop()
		if ctx.Err() != nil || !errors.Is(lastErr, errPortTaken) {
			break
		}
	}
	return nil, lastErr
}

var errPortTaken = errors.New("port taken")

func (s *Server) start(ctx context.Context, bins Binaries, o Options, try int) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	dataDir := filepath.Join(s.Dir, fmt.Sprintf("etcd-%d", try))
	s.etcd, err = startProcess(bins.Etcd, filepath.Join(s.Dir, fmt.Sprintf("etcd-%d.log", try)),
		"--name=kubetest",
		"--data-dir="+dataDir,
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--initial-cluster-state=new",
		"--log-level=warn",
		// A test's etcd holds nothing worth an fsync; it is torn down after.
		"--unsafe-no-fsync",
	)
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, http.DefaultClient, clientURL+"/health", s.etcd); err != nil {
		return fmt.Errorf("etcd did not become healthy: %w\n%s", err, s.etcd.tail())
	}
	securePort := ports[2]
	args := []string{
		"--etcd-servers=" + clientURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", securePort),
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(s.Dir, "apiserver-certs"),
		"--tls-cert-file=" + s.ca.serving.certFile,
		"--tls-private-key-file=" + s.ca.serving.keyFile,
		"--client-ca-file=" + s.ca.certFile,
		"--service-account-key-file=" + s.ca.saPublic,
		"--service-account-signing-key-file=" + s.ca.saPrivate,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.43.0.0/16",
		"--authorization-mode=RBAC",
		"--allow-privileged=false",
		"--profiling=false",
		"--v=1",
	}
	args = append(args, o.ExtraFlags...)
	s.apiserv, err = startProcess(bins.KubeAPIServer, filepath.Join(s.Dir, fmt.Sprintf("kube-apiserver-%d.log", try)), args...)
	if err != nil {
		return err
	}
	s.Config = &rest.Config{
		Host: fmt.Sprintf("https://127.0.0.1:%d", securePort),
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   s.ca.certPEM,
			CertData: s.ca.admin.certPEM,
			KeyData:  s.ca.admin.keyPEM,
		},
		UserAgent: "castellan-kubetest",
		QPS:       100,
		Burst:     200,
		Timeout:   30 * time.Second,
	}
	hc, err := rest.HTTPClientFor(s.Config)
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, hc, s.Config.Host+"/readyz", s.apiserv); err != nil {
		if strings.Contains(s.apiserv.tail(), "address already in use") || strings.Contains(s.etcd.tail(), "address already in use") {
			return fmt.Errorf("%w: %v", errPortTaken, err)
		}
		return fmt.Errorf("kube-apiserver did not become ready: %w\n%s", err, s.apiserv.tail())
	}
	// Ready also means the default namespace exists (the system namespaces controller made it).
	cs, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		return err
	}
	for {
		if _, err := cs.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{}); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace default never appeared: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop stops the API server, then etcd (SIGTERM, then SIGKILL after 10
// seconds), and waits for both to exit.
func (s *Server) Stop() error {
	var errs []error
	for _, p := range []*process{s.apiserv, s.etcd} {
		if p != nil {
			if err := p.stop(10 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Clientset is a clientset of the admin configuration.
func (s *Server) Clientset(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// UserConfig is a client configuration for user in groups, authenticated by
// a client certificate of the server's CA; what it may do is up to RBAC.
func (s *Server) UserConfig(t testing.TB, user string, groups ...string) *rest.Config {
	t.Helper()
	kp, err := s.ca.issueClient(user, groups)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(s.Config)
	cfg.CertData, cfg.KeyData = kp.certPEM, kp.keyPEM
	return cfg
}

// Kubeconfig writes a kubeconfig for cfg (context "kubetest") into the
// server's directory and returns its path.
func (s *Server) Kubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["kubetest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "kubetest"}
	kc.CurrentContext = "kubetest"
	f, err := os.CreateTemp(s.Dir, "kubeconfig-*")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := clientcmd.WriteToFile(*kc, f.Name()); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. Another process
// may take one before it is used; New retries with new ports then.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// waitHTTP polls url until it answers 200, p exits, or ctx ends.
func waitHTTP(ctx context.Context, hc *http.Client, url string, p *process) error {
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
		}
		last = err
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", filepath.Base(p.cmd.Path), p.err)
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// process is a child process whose output goes to a log file.
type process struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
	once    sync.Once
}

func startProcess(bin, logPath string, args ...string) (*process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Die with the test binary, whatever happens to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	p := &process{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) stop(grace time.Duration) error {
	var err error
	p.once.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			select {
			case <-p.done:
			case <-time.After(grace):
				err = fmt.Errorf("%s (pid %d) did not exit", filepath.Base(p.cmd.Path), p.cmd.Process.Pid)
			}
		}
	})
	return err
}

// tail is the end of the process's log.
func (p *process) tail() string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return filepath.Base(p.logPath) + ":\n" + strings.Join(lines, "\n")
}
