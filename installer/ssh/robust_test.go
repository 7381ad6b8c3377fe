package ssh_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"
)

// startedRun runs argv on the pool in the background; it returns once the
// command printed its first line, and a channel with the outcome.
func startedRun(t *testing.T, pool *castssh.Pool, h castssh.Host, argv []string) <-chan error {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := pool.Run(context.Background(), h, castssh.Cmd{Argv: argv, Stdout: pw})
		pw.Close()
		done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("command did not start: %v (%v)", err, <-done)
	}
	go io.Copy(io.Discard, pr)
	t.Logf("remote command started: %q", strings.TrimSpace(line))
	return done
}

func TestConnectionLostAndPoolRedial(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	pool, err := castssh.NewPool(lab.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	done := startedRun(t, pool, node.Host(), []string{"sh", "-c", "echo started; exec sleep 60"})
	if err := node.DropConnections(); err != nil {
		t.Fatal(err)
	}
	var err2 error
	select {
	case err2 = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after the connection was dropped")
	}
	var le *castssh.ConnectionLostError
	if !errors.As(err2, &le) || le.Host != node.Name || !strings.Contains(le.Command, "sleep 60") {
		t.Fatalf("want *ConnectionLostError naming the host and command, got %T: %v", err2, err2)
	}
	t.Logf("message: %v", err2)

	// The next use of the pool redials.
	res, err := pool.Run(testCtx(t), node.Host(), castssh.Cmd{Argv: []string{"echo", "again"}})
	if err != nil || strings.TrimSpace(string(res.Stdout)) != "again" {
		t.Fatalf("rerun after reconnect: %q, %v", res.Stdout, err)
	}
}

func TestKeepaliveDetectsHungPeer(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	cfg := lab.Config()
	cfg.KeepaliveInterval = 200 * time.Millisecond
	cfg.KeepaliveCountMax = 3
	pool, err := castssh.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	done := startedRun(t, pool, node.Host(), []string{"sh", "-c", "echo started; exec sleep 60"})
	thaw, err := node.FreezeConnections()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		thaw()
		t.Fatal("a hung peer was not detected")
	}
	took := time.Since(start)
	if err := thaw(); err != nil {
		t.Log(err)
	}
	var le *castssh.ConnectionLostError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), "keepalive") {
		t.Fatalf("want *ConnectionLostError about keepalives, got %T: %v", err, err)
	}
	t.Logf("hung peer detected after %s: %v", took.Round(time.Millisecond), err)
	if _, err := pool.Run(testCtx(t), node.Host(), castssh.Cmd{Argv: []string{"true"}}); err != nil {
		t.Fatalf("rerun after reconnect: %v", err)
	}
}

func TestCommandTimeout(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	c := connect(t, lab.Config(), node.Host())
	for _, sudo := range []bool{false, true} {
		arg := "987"
		if sudo {
			arg = "988"
		}
		start := time.Now()
		_, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"sleep", arg}, Sudo: sudo, Timeout: 500 * time.Millisecond})
		var te *castssh.CommandTimeoutError
		if !errors.As(err, &te) || te.Host != node.Name || !strings.Contains(err.Error(), "sleep "+arg) {
			t.Fatalf("sudo=%v: want *CommandTimeoutError naming host and command, got %T: %v", sudo, err, err)
		}
		// Only the timeout makes a *CommandTimeoutError, and without it the
		// call would wait out the 987 s sleep: no bound on wall time here.
		t.Logf("returned after %s: %v", time.Since(start).Round(time.Millisecond), err)
		// The remote process is gone.
		deadline := time.Now().Add(5 * time.Second)
		for {
			alive := false
			for _, p := range node.Processes() {
				if slices.Equal(p.Cmdline, []string{"sleep", arg}) {
					alive = true
				}
			}
			if !alive {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sudo=%v: remote `sleep %s` still running after the timeout", sudo, arg)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The connection is still good.
	output(t, c, castssh.Cmd{Argv: []string{"true"}})

	// Context cancellation stops a command too.
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	_, err := c.Run(ctx, castssh.Cmd{Argv: []string{"sleep", "989"}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want context deadline, got %v", err)
	}
}

var hostileArgs = []string{
	"plain",
	"",
	"with space",
	"  leading and trailing  ",
	"tab\there",
	"new\nline",
	"\n",
	`'single'`,
	`"double"`,
	`it's`,
	`back\slash`,
	`\`,
	"$(touch /tmp/pwned-castellan)",
	"`touch /tmp/pwned-castellan`",
	"${HOME}",
	"$HOME",
	"$1 $@ $*",
	"*",
	"/*",
	"?",
	"[a-z]*",
	"~",
	"~root",
	"-n",
	"--",
	"-rf /",
	"--help",
	"a;b",
	"a&&b||c",
	"a|b",
	"a>b",
	"<in",
	"!history",
	"#comment",
	"{a,b}",
	"a=b",
	"=cmd",
	"%s %n %%",
	"\x01\x1b[31mred\x7f",
	"ünïcödé ✓",
	string([]byte{0xff, 0xfe, 0x80}),
	strings.Repeat("x'y\"z", 500),
}

func TestHostileArgv(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	c := connect(t, lab.Config(), lab.Nodes[0].Host())
	for _, sudo := range []bool{false, true} {
		argv := append([]string{"printf", `%s\0`}, hostileArgs...)
		res, err := c.Run(testCtx(t), castssh.Cmd{Argv: argv, Sudo: sudo})
		if err != nil {
			t.Fatalf("sudo=%v: %v", sudo, err)
		}
		got := strings.Split(string(res.Stdout), "\x00")
		got = got[:len(got)-1] // after the last NUL
		if !slices.Equal(got, hostileArgs) {
			for i := range max(len(got), len(hostileArgs)) {
				var g, w string
				if i < len(got) {
					g = got[i]
				}
				if i < len(hostileArgs) {
					w = hostileArgs[i]
				}
				if g != w {
					t.Errorf("sudo=%v: arg %d: got %q want %q", sudo, i, g, w)
				}
			}
			t.FailNow()
		}
	}
	// Stdin passes through byte-exact too.
	in := []byte("line1\n\x00binary\xff\n$(not run)\n")
	res, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"cat"}, Stdin: bytes.NewReader(in)})
	if err != nil || !bytes.Equal(res.Stdout, in) {
		t.Fatalf("stdin round trip: %q, %v", res.Stdout, err)
	}
	// A NUL byte cannot be an argument: refused locally.
	if _, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"echo", "a\x00b"}}); err == nil {
		t.Fatal("NUL in argv accepted")
	}
	// A non-zero exit is an ExitError with the result.
	res, err = c.Run(testCtx(t), castssh.Cmd{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	var ee *castssh.ExitError
	if !errors.As(err, &ee) || ee.ExitCode != 3 || res.ExitCode != 3 || string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
		t.Fatalf("exit 3: %+v, %v", res, err)
	}
}

func TestDialRetries(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	counting := func(cfg *castssh.Config) *atomic.Int32 {
		var n atomic.Int32
		dial := cfg.Dial
		cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			n.Add(1)
			return dial(ctx, network, addr)
		}
		cfg.DialRetries = 3
		cfg.RetryBackoff = 20 * time.Millisecond
		return &n
	}
	tests := []struct {
		name     string
		mod      func(*castssh.Config)
		host     castssh.Host
		attempts int32
		check    func(error) bool
	}{
		{"network error retried", func(*castssh.Config) {}, castssh.Host{Name: "closed-port", Address: node.Address, Port: 2222}, 4,
			func(err error) bool { var de *castssh.DialError; return errors.As(err, &de) && de.Attempts == 4 }},
		{"auth failure not retried", func(c *castssh.Config) { c.KeyFiles = []string{writeKey(t, "")} }, node.Host(), 1,
			func(err error) bool { var ae *castssh.AuthError; return errors.As(err, &ae) }},
		{"host key error not retried", func(c *castssh.Config) {
			c.KnownHostsFile = lab.WriteKnownHosts(sshtest.KnownHostsOptions{Nodes: []*sshtest.Node{}})
		}, node.Host(), 1,
			func(err error) bool { var he *castssh.HostKeyError; return errors.As(err, &he) }},
		{"success on first attempt", func(*castssh.Config) {}, node.Host(), 1, func(err error) bool { return err == nil }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := lab.Config()
			n := counting(&cfg)
			tc.mod(&cfg)
			c, err := castssh.Connect(testCtx(t), cfg, tc.host)
			if c != nil {
				c.Close()
			}
			if !tc.check(err) || n.Load() != tc.attempts {
				t.Fatalf("attempts %d (want %d), err %T: %v", n.Load(), tc.attempts, err, err)
			}
			t.Logf("%d attempt(s): %v", n.Load(), err)
		})
	}
}

func TestDialTimeout(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	resume, err := node.PauseListener()
	if err != nil {
		t.Fatal(err)
	}
	defer resume()
	cfg := lab.Config()
	cfg.DialTimeout = 300 * time.Millisecond
	cfg.DialRetries = 1
	cfg.RetryBackoff = 10 * time.Millisecond
	start := time.Now()
	_, err = castssh.Connect(testCtx(t), cfg, node.Host())
	took := time.Since(start)
	var de *castssh.DialError
	if !errors.As(err, &de) || de.Attempts != 2 || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("want a DialError after 2 timed-out attempts, got %T: %v", err, err)
	}
	// Two attempts that each say they timed out after DialTimeout are the
	// proof; the wall time is only logged (a loaded machine stretches it).
	t.Logf("after %s: %v", took.Round(time.Millisecond), err)
	// Resumed, it answers again. Not within 300 ms: a real handshake on a
	// loaded machine takes longer, and that is not what is tested here.
	if err := resume(); err != nil {
		t.Fatal(err)
	}
	c := connect(t, lab.Config(), node.Host())
	output(t, c, castssh.Cmd{Argv: []string{"true"}})
}

func TestPoolOneConnectionPerHost(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 3})
	pool, err := castssh.NewPool(lab.Config())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 60)
	for i := 0; i < 20; i++ {
		for _, n := range lab.Nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := pool.Run(testCtx(t), n.Host(), castssh.Cmd{Argv: []string{"hostname", "-I"}})
				if err == nil && strings.TrimSpace(string(res.Stdout)) != n.Address {
					err = errors.New("wrong node answered: " + string(res.Stdout))
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, n := range lab.Nodes {
		if c := n.Connections(); c != 1 {
			t.Errorf("%s serves %d connections, want 1", n.Name, c)
		}
	}
	if err := pool.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Run(testCtx(t), lab.Nodes[0].Host(), castssh.Cmd{Argv: []string{"true"}}); err == nil {
		t.Fatal("closed pool still runs commands")
	}
}
