package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"castellan/installer/agent"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// The test binary doubles as the helpers the tests start as processes of
// their own, inside a test namespace:
//
//	MESH_TEST_GUARD_ROOT=DIR  the revert guard (OpGuard) of a node rooted at DIR
//	MESH_TEST_WG=NAME         a userspace WireGuard device (wireguard-go on
//	                          /dev/net/tun) named NAME with its UAPI socket
//	                          in /var/run/wireguard, until SIGTERM
func TestMain(m *testing.M) {
	if root := os.Getenv("MESH_TEST_GUARD_ROOT"); root != "" {
		var req GuardRequest
		if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
			fmt.Fprintln(os.Stderr, "guard:", err)
			os.Exit(2)
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		g, err := (&Node{Root: root}).RunGuard(ctx, req)
		fmt.Fprintf(os.Stderr, "guard %s ended: %s %s %v\n", req.Token, g.State, g.RevertReason, err)
		os.Exit(0)
	}
	if root := os.Getenv("MESH_TEST_AGENT_ROOT"); root != "" {
		// A node's agent: `castellan agent OP` for a node rooted at root.
		exe, _ := os.Executable()
		n := &Node{Root: root, GuardCommand: []string{exe}, GuardEnv: []string{"MESH_TEST_AGENT_ROOT=", "MESH_TEST_GUARD_ROOT=" + root}}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		err := agent.NewRegistry(n.Handlers()...).Serve(ctx, os.Args[1], os.Stdin, os.Stdout, slog.New(slog.NewTextHandler(os.Stderr, nil)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if name := os.Getenv("MESH_TEST_WG"); name != "" {
		os.Exit(runWireGuardGo(name))
	}
	os.Exit(m.Run())
}

func runWireGuardGo(name string) int {
	t, err := tun.CreateTUN(name, device.DefaultMTU)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tun:", err)
		return 1
	}
	logger := device.NewLogger(device.LogLevelError, "("+name+") ")
	dev := device.NewDevice(t, conn.NewDefaultBind(), logger)
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "uapi:", err)
		return 1
	}
	l, err := ipc.UAPIListen(name, f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "uapi listen:", err)
		return 1
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case <-dev.Wait():
	}
	l.Close()
	dev.Close()
	return 0
}
