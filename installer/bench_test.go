package installer

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"castellan/installer/agent"
	"castellan/installer/engine"
	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"
	"castellan/installer/testenv"
	"castellan/phases/identity"
)

// BenchmarkScale measures what a no-op rerun costs at 50, 200 and 500 nodes
// (CASTELLAN_BENCH_NODES=50,200 chooses; CASTELLAN_BENCH_PARALLEL=N passes
// --parallel N): the real castellan binary runs
// `plan` of every phase against real sshd nodes whose agent is in place, and
// `verify` (every phase's plan and checks, one exec per node: it must cost
// what the plan costs), and in the same run a floor process (x/crypto/ssh, one process: dial,
// authenticate and run one command on every node at once) does the least
// any SSH tool must do on the same nodes; at 50 nodes or fewer Ansible's
// `setup` (gather_subset=min, pipelining, forks = nodes) runs too. For each
// it prints the wall time, its own CPU (user+sys) and peak RSS, and the
// node-side CPU per node (sshd, login shell, sudo, agent: the nodes' cgroup).
// Figures only: nothing here asserts a time.
//
// The nodes share this machine's two cores with castellan: node-side CPU is
// what a real cluster would spend on its own machines, reported apart.
func BenchmarkScale(b *testing.B) {
	sizes := []int{50, 200, 500}
	if s := os.Getenv("CASTELLAN_BENCH_NODES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("CASTELLAN_BENCH_NODES=%q: give node counts like 50,200", s)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) { benchScale(b, n) })
	}
}

// measure is one process's cost.
type measure struct {
	wall, cpu, nodeCPU time.Duration
	rss                int64
	out                string
}

func benchScale(b *testing.B, n int) {
	lab := sshtest.New(b, sshtest.Options{Nodes: n, HostKeyTypes: []string{sshtest.Ed25519},
		PrivateDirs: []string{agent.BinDir, "/run/castellan", identity.DefaultDir, "/run/systemd"}, CgroupV2: true, CPUAccounting: true})
	for _, node := range lab.Nodes {
		if err := os.MkdirAll(filepath.Join(node.PrivatePath("/run/systemd"), "system"), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("%d sshd nodes ready in %s", n, lab.SetupTime.Round(time.Millisecond))
	prof := testCluster(b, lab, "", "")
	bin := buildCastellan(b)
	start := time.Now()
	if _, err := applyYes(b, testConfig(b, lab, &engine.Recorder{}), prof); err != nil {
		b.Fatalf("the first apply (shipping the agent) failed: %v", err)
	}
	b.Logf("first apply (agent shipped to %d nodes): %s", n, time.Since(start).Round(time.Millisecond))
	writeFloorSpec(b, lab)
	withAnsible := n <= 50
	if _, err := exec.LookPath("ansible"); err != nil && withAnsible {
		testenv.Missing(b, "ansible is not installed (make bench installs it)")
	}
	var inv string
	if withAnsible {
		inv = ansibleInventory(b, lab)
	}

	var c, v, f, a measure
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := run(b, lab, planArgv(b, lab, bin, prof)...)
		if !strings.Contains(m.out, "No changes: the nodes match the profile.") {
			b.Fatalf("castellan's plan is not a no-op:\n%s", m.out)
		}
		c = c.add(m)
		vargv := []string{"ip", "netns", "exec", lab.ClientNS, bin, "verify", "-f", prof, "--agent-binary", buildAgent(b), "--problems"}
		if p := os.Getenv("CASTELLAN_BENCH_PARALLEL"); p != "" {
			vargv = append(vargv, "--parallel", p)
		}
		m = run(b, lab, vargv...)
		if !strings.Contains(m.out, "Everything matches the profile and the state repo.") {
			b.Fatalf("castellan verify found something:\n%s", m.out)
		}
		v = v.add(m)
		m = run(b, lab, floorArgv(lab)...)
		if !strings.Contains(m.out, fmt.Sprintf("floor: %d nodes", n)) {
			b.Fatalf("the floor did not reach every node:\n%s", m.out)
		}
		f = f.add(m)
		if withAnsible {
			m = run(b, lab, "ip", "netns", "exec", lab.ClientNS, "ansible", "all", "-i", inv, "-m", "setup", "-a", "gather_subset=min", "-o")
			if got := strings.Count(m.out, "| SUCCESS"); got != n {
				b.Fatalf("ansible gathered facts on %d of %d nodes:\n%s", got, n, m.out)
			}
			a = a.add(m)
		}
	}
	b.StopTimer()
	per := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
	perNode := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(b.N) / float64(n) }
	b.ReportMetric(per(c.wall), "castellan-s")
	b.ReportMetric(per(f.wall), "floor-s")
	b.ReportMetric(per(c.wall)/per(f.wall), "castellan/floor")
	b.ReportMetric(per(c.cpu), "castellan-cpu-s")
	b.ReportMetric(float64(c.rss)/(1<<20), "castellan-peak-RSS-MB")
	b.ReportMetric(perNode(c.nodeCPU), "castellan-node-cpu-ms/node")
	b.ReportMetric(per(v.wall), "verify-s")
	b.ReportMetric(per(v.wall)/per(c.wall), "verify/plan")
	b.ReportMetric(per(v.cpu), "verify-cpu-s")
	b.ReportMetric(perNode(v.nodeCPU), "verify-node-cpu-ms/node")
	b.ReportMetric(per(f.cpu), "floor-cpu-s")
	b.ReportMetric(perNode(f.nodeCPU), "floor-node-cpu-ms/node")
	table := fmt.Sprintf("\n| nodes | | wall | own CPU | peak RSS | node CPU per node |\n|---|---|---|---|---|---|\n"+
		"| %d | castellan plan (no-op, every phase) | %.2f s | %.2f s | %.0f MB | %.1f ms |\n"+
		"| %d | castellan verify (every phase and check) | %.2f s | %.2f s | %.0f MB | %.1f ms |\n"+
		"| %d | x/crypto/ssh floor | %.2f s | %.2f s | %.0f MB | %.1f ms |\n",
		n, per(c.wall), per(c.cpu), float64(c.rss)/(1<<20), perNode(c.nodeCPU),
		n, per(v.wall), per(v.cpu), float64(v.rss)/(1<<20), perNode(v.nodeCPU),
		n, per(f.wall), per(f.cpu), float64(f.rss)/(1<<20), perNode(f.nodeCPU))
	if withAnsible {
		b.ReportMetric(per(a.wall), "ansible-s")
		b.ReportMetric(per(a.wall)/per(c.wall), "ansible/castellan")
		table += fmt.Sprintf("| %d | Ansible setup (min, pipelining, forks=%d) | %.2f s | %.2f s | %.0f MB | %.1f ms |\n",
			n, n, per(a.wall), per(a.cpu), float64(a.rss)/(1<<20), perNode(a.nodeCPU))
		table += fmt.Sprintf("castellan/floor %.2fx; Ansible/castellan %.1fx\n", per(c.wall)/per(f.wall), per(a.wall)/per(c.wall))
	} else {
		table += fmt.Sprintf("castellan/floor %.2fx\n", per(c.wall)/per(f.wall))
	}
	table += decomposition(b, lab, n, map[string][]string{"castellan plan": planArgv(b, lab, bin, prof), "x/crypto/ssh floor": floorArgv(lab)})
	// Printed, not logged: the testing package keeps only the first lines
	// of a benchmark's log.
	fmt.Printf("\n%s (b.N=%d, figures per run):\n%s\n", b.Name(), b.N, table)
}

// decomposition runs each command once more under perf and tells, per node,
// which processes the nodes' CPU went to. The last column is the nodes'
// cgroup CPU over that same run: perf's samples add its own cost to what
// they sample, so the row is read as shares of that total.
func decomposition(b *testing.B, lab *sshtest.Lab, n int, cmds map[string][]string) string {
	out := "\nnode CPU per node by process (perf, one extra run each):\n\n| | sshd | login shell, launcher, tools | sudo | agent | other | sampled total | cgroup total, same run |\n|---|---|---|---|---|---|---|---|\n"
	for _, name := range slices.Sorted(maps.Keys(cmds)) {
		before, err := lab.NodeCPU()
		if err != nil {
			b.Fatal(err)
		}
		by, err := lab.NodeCPUByProcess(b.TempDir(), cmds[name]...)
		if err != nil {
			return fmt.Sprintf("\nno breakdown by process: %v\n", err)
		}
		after, err := lab.NodeCPU()
		if err != nil {
			b.Fatal(err)
		}
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
		var sampled time.Duration
		for _, d := range by {
			sampled += d
		}
		out += fmt.Sprintf("| %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms |\n", name,
			ms(by["sshd"]), ms(by["shell"]), ms(by["sudo"]), ms(by["agent"]), ms(by["other"]), ms(sampled), ms(after-before))
	}
	return out
}

// planArgv is castellan's no-op plan of every phase, from the client
// namespace.
func planArgv(b *testing.B, lab *sshtest.Lab, bin, prof string) []string {
	argv := []string{"ip", "netns", "exec", lab.ClientNS, bin, "plan", "-f", prof, "--agent-binary", buildAgent(b)}
	if p := os.Getenv("CASTELLAN_BENCH_PARALLEL"); p != "" {
		argv = append(argv, "--parallel", p)
	}
	return argv
}

// floorArgv is the floor process: this test binary, which TestMain turns
// into runFloor.
func floorArgv(lab *sshtest.Lab) []string {
	return []string{"ip", "netns", "exec", lab.ClientNS, os.Args[0], "-test.run=^$"}
}

func (m measure) add(o measure) measure {
	return measure{wall: m.wall + o.wall, cpu: m.cpu + o.cpu, nodeCPU: m.nodeCPU + o.nodeCPU, rss: max(m.rss, o.rss), out: o.out}
}

// run runs a command and measures its wall time, its CPU (getrusage of
// the child and what it waited for), its peak RSS and the CPU the lab's
// nodes used meanwhile.
//
// Peak RSS is GNU time's %M (time(1)), not the child's ru_maxrss: a child
// forked from this process (vfork, then exec) has this process's RSS
// recorded as its own high-water mark at exec (the kernel keeps the larger
// of the old and new image's), so every figure read 165 MB whatever ran.
// time(1) forks from its own small image, so its child's ru_maxrss is the
// command's.
func run(b *testing.B, lab *sshtest.Lab, argv ...string) measure {
	b.Helper()
	before, err := lab.NodeCPU()
	if err != nil {
		b.Fatal(err)
	}
	rssFile := filepath.Join(b.TempDir(), "rss")
	cmd := exec.Command(gnuTime(b), append([]string{"-f", "%M", "-o", rssFile, "--"}, argv...)...)
	cmd.Env = os.Environ()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	wall := time.Since(start)
	if cmd.ProcessState == nil {
		b.Fatalf("%v: %v", argv, err)
	}
	after, err := lab.NodeCPU()
	if err != nil {
		b.Fatal(err)
	}
	m := measure{wall: wall, nodeCPU: after - before, out: string(out)}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	data, err := os.ReadFile(rssFile)
	if err != nil {
		b.Fatalf("time(1) wrote no peak RSS for %v: %v\n%s", argv, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	kb, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		b.Fatalf("time(1)'s peak RSS for %v: %q", argv, data)
	}
	m.rss = kb << 10
	return m
}

// gnuTime is GNU time (Debian's package time), which make bench installs.
func gnuTime(b *testing.B) string {
	const p = "/usr/bin/time"
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(b, "GNU time (/usr/bin/time, Debian package time) is not installed; make bench installs it")
	}
	return p
}

// floorSpecEnv makes the test binary the floor process: it reads the JSON
// spec the variable names, dials every node and runs one command on each.
const floorSpecEnv = "CASTELLAN_BENCH_FLOOR"

type floorSpec struct {
	User, KeyFile, KnownHosts string
	Hosts                     []castssh.Host
}

func writeFloorSpec(b *testing.B, lab *sshtest.Lab) {
	spec := floorSpec{User: lab.User, KeyFile: lab.KeyFile, KnownHosts: lab.WriteKnownHosts(sshtest.KnownHostsOptions{}), Hosts: sshtest.Hosts(lab.Nodes)}
	data, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	p := filepath.Join(b.TempDir(), "floor.json")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		b.Fatal(err)
	}
	b.Setenv(floorSpecEnv, p)
}

// runFloor is the floor process: one x/crypto/ssh pool, every node at once,
// one command each.
func runFloor(specPath string) int {
	data, err := os.ReadFile(specPath)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	var spec floorSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		fmt.Println(err)
		return 1
	}
	cfg := castssh.Config{User: spec.User, KeyFiles: []string{spec.KeyFile}, KnownHostsFile: spec.KnownHosts}
	if err := sshtest.ConnectAndRun(context.Background(), cfg, spec.Hosts, castssh.Cmd{Argv: []string{"uname", "-a"}}); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Printf("floor: %d nodes\n", len(spec.Hosts))
	return 0
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
