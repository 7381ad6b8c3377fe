package installer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/ssh/sshtest"
	"castellan/installer/testenv"
)

// BenchmarkPreflightVsAnsible measures a no-op preflight (the agent is in
// place; facts are gathered and checked on every node) by the real castellan
// binary over 1, 10 and 50 sshd nodes, and the same fact gathering by
// Debian's Ansible (`ansible -m setup`, forks = nodes, pipelining) over the
// same nodes, in the same run. It prints figures; it asserts no timing.
//
// On this test host preflight's checks may fail (no systemd as PID 1): the
// facts are gathered all the same, which is what is measured.
func BenchmarkPreflightVsAnsible(b *testing.B) {
	if _, err := exec.LookPath("ansible"); err != nil {
		testenv.Missing(b, "ansible is not installed (make bench installs it)")
	}
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			lab := sshtest.New(b, sshtest.Options{Nodes: n, HostKeyTypes: []string{sshtest.Ed25519}, PrivateDirs: []string{agent.BinDir}})
			prof := testCluster(b, lab, "", "")
			bin := buildCastellan(b)
			// Ship the agent once: what follows is the no-op rerun.
			res, _ := applyYes(b, testConfig(b, lab, &engine.Recorder{}), prof)
			if res == nil || len(res.Record.Outputs["preflight.facts"]) != n {
				b.Fatalf("the first apply did not reach every node: %+v", res)
			}
			inv := ansibleInventory(b, lab)
			var cTime, aTime time.Duration
			var cRSS, aRSS int64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d, rss, out := timeChild(b, "ip", "netns", "exec", lab.ClientNS, bin, "plan", "-f", prof, "--only", "preflight", "--agent-binary", bin)
				// Every node's facts line ("Debian ..., kernel ...") says they were gathered.
				if got := strings.Count(out, ", kernel "); got != n {
					b.Fatalf("castellan gathered facts on %d of %d nodes:\n%s", got, n, out)
				}
				cTime += d
				cRSS = max(cRSS, rss)
				d, rss, out = timeChild(b, "ip", "netns", "exec", lab.ClientNS, "ansible", "all", "-i", inv, "-m", "setup", "-o")
				if got := strings.Count(out, "| SUCCESS"); got != n {
					b.Fatalf("ansible gathered facts on %d of %d nodes:\n%s", got, n, out)
				}
				aTime += d
				aRSS = max(aRSS, rss)
			}
			b.StopTimer()
			per := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
			b.ReportMetric(per(cTime), "castellan-s")
			b.ReportMetric(per(aTime), "ansible-s")
			b.ReportMetric(per(aTime)/per(cTime), "ansible/castellan")
			b.ReportMetric(float64(cRSS)/(1<<20), "castellan-peak-RSS-MB")
			b.ReportMetric(float64(aRSS)/(1<<20), "ansible-peak-RSS-MB")
		})
	}
}

// timeChild runs a command, returning its wall time, its peak RSS and its
// combined output. A non-zero exit is not an error here (see above).
func timeChild(b *testing.B, argv ...string) (time.Duration, int64, string) {
	b.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if cmd.ProcessState == nil {
		b.Fatalf("%v: %v", argv, err)
	}
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss * 1024
	}
	return d, rss, string(out)
}

// ansibleInventory writes an inventory and config for the lab: the same
// user, key and strictly checked host keys castellan uses.
func ansibleInventory(b *testing.B, lab *sshtest.Lab) string {
	b.Helper()
	dir := b.TempDir()
	kh := lab.WriteKnownHosts(sshtest.KnownHostsOptions{})
	var inv strings.Builder
	inv.WriteString("[nodes]\n")
	for _, n := range lab.Nodes {
		fmt.Fprintf(&inv, "%s ansible_host=%s ansible_port=%d\n", n.Name, n.Address, n.Port)
	}
	fmt.Fprintf(&inv, "\n[nodes:vars]\nansible_user=%s\nansible_ssh_private_key_file=%s\nansible_python_interpreter=/usr/bin/python3\nansible_remote_tmp=/tmp/ansible-%s\n",
		lab.User, lab.KeyFile, lab.ID)
	path := filepath.Join(dir, "inventory.ini")
	if err := os.WriteFile(path, []byte(inv.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	// A fresh ControlPath directory per lab, so no run reuses another's connections.
	cp := filepath.Join(dir, "cp")
	if err := os.MkdirAll(cp, 0o700); err != nil {
		b.Fatal(err)
	}
	b.Setenv("ANSIBLE_FORKS", fmt.Sprint(len(lab.Nodes)))
	b.Setenv("ANSIBLE_PIPELINING", "True")
	b.Setenv("ANSIBLE_HOST_KEY_CHECKING", "True")
	b.Setenv("ANSIBLE_SSH_ARGS", "-o ControlMaster=no -o UserKnownHostsFile="+kh+" -o StrictHostKeyChecking=yes")
	b.Setenv("ANSIBLE_LOCAL_TEMP", filepath.Join(dir, "tmp"))
	b.Setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", cp)
	b.Setenv("ANSIBLE_NOCOLOR", "1")
	return path
}
