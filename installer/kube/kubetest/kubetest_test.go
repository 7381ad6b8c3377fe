package kubetest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestCacheKeyMatchesBuildScript: kubetest looks for the binaries where
// build.sh puts them.
func TestCacheKeyMatchesBuildScript(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, buildModule, "build.sh"), "--print-dir")
	cmd.Env = append(os.Environ(), "CASTELLAN_CACHE="+cache)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build.sh --print-dir: %v", err)
	}
	key, err := CacheKey(filepath.Join(root, buildModule))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), filepath.Join(cache, "kube-apiserver", key); got != want {
		t.Errorf("build.sh builds into %s, kubetest looks in %s", got, want)
	}
	if !strings.HasPrefix(key, "v1.37.2-go1.") {
		t.Errorf("key %s does not start with the Kubernetes and Go versions", key)
	}
}

func TestServer(t *testing.T) {
	s := Start(t)
	cs := s.Clientset(t)
	ctx := context.Background()

	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.37.2" {
		t.Errorf("server version %q; want v1.37.2 (stamped by build.sh)", v.GitVersion)
	}

	// The API server validates: an invalid object is refused.
	bad := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "Not_A_Name", Namespace: "default"}}
	if _, err := cs.CoreV1().ConfigMaps("default").Create(ctx, bad, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("invalid name accepted or wrong error: %v", err)
	}

	// RBAC: a user without bindings may do nothing; a binding changes that.
	alice, err := kubernetes.NewForConfig(s.UserConfig(t, "alice", "developers"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("alice listed namespaces without a binding: %v", err)
	}

	// A kubeconfig written for the admin loads with clientcmd and works.
	path := s.Kubeconfig(t, s.Config)
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	viaFile, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := viaFile.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{}); err != nil {
		t.Errorf("kube-system through the kubeconfig: %v", err)
	}
}

// TestStopLeavesNothing: after Stop both processes are gone and their ports closed.
func TestStopLeavesNothing(t *testing.T) {
	bins, err := FindBinaries()
	if err != nil {
		if requireReal() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := New(ctx, bins, t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started in %v", s.StartTime)
	pids := []int{s.apiserv.cmd.Process.Pid, s.etcd.cmd.Process.Pid}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("process %d still exists after Stop", pid)
		}
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// BenchmarkStart measures how long etcd and kube-apiserver take to become
// ready (prints figures; no assertion on time).
func BenchmarkStart(b *testing.B) {
	bins, err := FindBinaries()
	if err != nil {
		b.Skip(err)
	}
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		s, err := New(ctx, bins, b.TempDir(), Options{})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(s.StartTime.Seconds(), "s/start")
		if err := s.Stop(); err != nil {
			b.Fatal(err)
		}
	}
}
