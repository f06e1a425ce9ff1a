package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/batonhq/baton/embedded"
)

// certs writes a CA, a server certificate for 127.0.0.1 and a client
// certificate into dir, all made for this test.
type certs struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

func makeCerts(t *testing.T, dir string) certs {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, "EC PRIVATE KEY", der)
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "baton test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	srvDER, srvKey := leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	cliDER, cliKey := leaf(3, "baton-test-client", x509.ExtKeyUsageClientAuth)
	return certs{
		ca:         write("ca.pem", "CERTIFICATE", caDER),
		serverCert: write("server.pem", "CERTIFICATE", srvDER),
		serverKey:  writeKey("server-key.pem", srvKey),
		clientCert: write("client.pem", "CERTIFICATE", cliDER),
		clientKey:  writeKey("client-key.pem", cliKey),
	}
}

// startTLSEtcd runs "baton serve" serving clients over TLS with client
// certificates required, as a user would start it.
func startTLSEtcd(t *testing.T, c certs) string {
	t.Helper()
	ports, err := embedded.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	clientURL := fmt.Sprintf("https://127.0.0.1:%d", ports[0])
	srv := start(t, testEnv(), "serve", "--data-dir", filepath.Join(t.TempDir(), "data"),
		"--listen-client-urls", clientURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		"--cert-file", c.serverCert, "--key-file", c.serverKey,
		"--trusted-ca-file", c.ca, "--client-cert-auth")
	srv.stdout.waitFor(t, srv.name, 0, "is ready", 60*time.Second)
	return clientURL
}

// enableAuth creates root and alice, who may read and write team/ only,
// and turns authentication on.
func enableAuth(t *testing.T, ep string, c certs) {
	t.Helper()
	tlsCfg, err := transport.TLSInfo{CertFile: c.clientCert, KeyFile: c.clientKey, TrustedCAFile: c.ca}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: tlsCfg, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	steps := []func() error{
		func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "team"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "team", "team/", clientv3.GetPrefixRangeEnd("team/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, "alice", "alicepw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "alice", "team"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup step %d: %v", i, err)
		}
	}
}

// TestTLSAndAuth: over TLS with a client certificate, a user restricted to
// team/ can lock under it; outside it baton says "permission denied" in
// one line and exits 77. A wrong password, and a missing CA, are one-line
// errors too.
func TestTLSAndAuth(t *testing.T) {
	c := makeCerts(t, t.TempDir())
	ep := startTLSEtcd(t, c)
	enableAuth(t, ep, c)
	env := testEnv("BATON_ENDPOINTS="+ep, "BATON_USER=alice", "BATON_PASSWORD=alicepw")
	// A dial timeout well above the default: with the race detector on a
	// busy machine, a TLS handshake plus authentication once took over the
	// default 5 s, and this test is about what the commands say, not how
	// fast they connect.
	tlsFlags := []string{"--cacert", c.ca, "--cert", c.clientCert, "--key", c.clientKey, "--dial-timeout", "30s"}

	code, stdout, stderr := runBaton(t, env, 60*time.Second, append(tlsFlags, "lock", "team/job", "--", "sh", "-c", "echo locked $BATON_FENCING_TOKEN")...)
	if code != 0 || !strings.HasPrefix(stdout, "locked ") {
		t.Fatalf("lock team/job as alice: exit %d, stdout %q\n%s", code, stdout, stderr)
	}

	code, stdout, stderr = runBaton(t, env, 60*time.Second, append(tlsFlags, "lock", "other/job", "--", "echo", "ran")...)
	if code != exitDenied || strings.Contains(stdout, "ran") {
		t.Errorf("lock other/job as alice: exit %d, want %d without running CMD; stdout %q", code, exitDenied, stdout)
	}
	if !strings.Contains(stderr, "permission denied") || !strings.Contains(stderr, `user "alice"`) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("want one line saying permission denied for alice, got:\n%s", stderr)
	}

	code, _, stderr = runBaton(t, env, 60*time.Second, append(tlsFlags, "elect", "--listen", "other/e")...)
	if code != exitDenied || !strings.Contains(stderr, "permission denied") {
		t.Errorf("elect --listen other/e as alice: exit %d, want %d; stderr:\n%s", code, exitDenied, stderr)
	}

	code, _, stderr = runBaton(t, env, 60*time.Second, append(tlsFlags, "--password", "wrong", "status", "team/")...)
	if code != exitDenied || !strings.Contains(stderr, "authentication failed") {
		t.Errorf("wrong password: exit %d, want %d with \"authentication failed\"; stderr:\n%s", code, exitDenied, stderr)
	}

	code, _, stderr = runBaton(t, env, 60*time.Second, "--dial-timeout", "2s", "--cert", c.clientCert, "--key", c.clientKey, "status", "team/")
	if code != exitUnavailable || !strings.Contains(stderr, "certificate") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("no --cacert: exit %d, want %d and one line about the certificate; stderr:\n%s", code, exitUnavailable, stderr)
	}
}
