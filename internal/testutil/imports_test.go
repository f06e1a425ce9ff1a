package testutil

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const module = "github.com/batonhq/baton"

// notLibrary are the packages that may run an etcd server: they are tools,
// not what users import.
var notLibrary = []string{
	module + "/cmd/",
	module + "/embedded",
	module + "/internal/",
}

// forbidden are what a library package must not depend on: etcd's server
// or anything that brings it in.
var forbidden = []string{
	"go.etcd.io/etcd/server/",
	"go.etcd.io/etcd/pkg/v3/proxy",
	module + "/embedded",
	module + "/internal/bench",
	module + "/internal/faults",
	module + "/internal/testutil",
}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goBin, append([]string{"list"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, out)
	}
	return strings.Fields(string(out))
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// TestLibraryPackagesImportNoServer fails when a package users import
// (concurrency, memlock, ...) depends on etcd's server modules.
func TestLibraryPackagesImportNoServer(t *testing.T) {
	var libs []string
	for _, p := range goList(t, module+"/...") {
		if !hasAnyPrefix(p, notLibrary) && p != module+"/embedded" {
			libs = append(libs, p)
		}
	}
	if len(libs) == 0 {
		t.Fatal("found no library packages")
	}
	for _, pkg := range libs {
		for _, dep := range goList(t, "-deps", "-f", "{{.ImportPath}}", pkg) {
			if hasAnyPrefix(dep, forbidden) {
				t.Errorf("%s depends on %s; library packages may import etcd's client modules only", pkg, dep)
			}
		}
	}
	t.Logf("checked %v", libs)
}
