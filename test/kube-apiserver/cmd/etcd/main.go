// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3's
// etcdmain, the same entry point as etcd's own binary), at the version
// k8s.io/kubernetes pins, so the test tier's etcd matches what the API
// server was built and tested against.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
