package main

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// durationValue is a duration flag that also takes a bare number as
// seconds ("--ttl 10" as etcdctl's --ttl), and whose error says what to
// type instead of "time: missing unit in duration".
type durationValue time.Duration

func durationFlag(f *pflag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	f.Var((*durationValue)(p), name, usage+" (a duration such as 10s or 1m30s; a bare number is seconds)")
}

func (d *durationValue) Set(s string) error {
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		*d = durationValue(n * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("use a duration such as 10s, 1m30s or 500ms (a bare number is seconds)")
	}
	*d = durationValue(v)
	return nil
}

func (d *durationValue) String() string { return time.Duration(*d).String() }

func (d *durationValue) Type() string { return "duration" }

// checkEndpoints rejects endpoints that cannot work before any dial: etcd
// takes host:port, or a URL with scheme http, https, unix or unixs.
// source names where they came from (--endpoints, $BATON_ENDPOINTS).
func checkEndpoints(eps []string, source string) error {
	for _, ep := range eps {
		if why := badEndpoint(ep); why != "" {
			return usageErrorf("%s: %q %s", source, ep, why)
		}
	}
	return nil
}

// badEndpoint says what is wrong with ep, or "" when it can be dialled.
func badEndpoint(ep string) string {
	const want = "is not host:port or http(s)://host:port"
	if scheme, rest, ok := strings.Cut(ep, "://"); ok {
		switch scheme {
		case "http", "https":
		case "unix", "unixs":
			return ""
		default:
			if _, _, err := net.SplitHostPort(rest); err == nil {
				return fmt.Sprintf("%s: unknown scheme %q (did you mean http://%s or https://%s?)", want, scheme, rest, rest)
			}
			return fmt.Sprintf("%s: unknown scheme %q", want, scheme)
		}
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			return want
		}
		if u.Port() == "" {
			return want + ": it has no port (etcd's is 2379)"
		}
		return ""
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		if !strings.Contains(ep, ":") {
			return want + ": it has no port (etcd's is 2379: " + ep + ":2379)"
		}
		return want
	}
	for _, scheme := range []string{"http", "https"} {
		if rest, ok := strings.CutPrefix(host, scheme+"//"); ok {
			return fmt.Sprintf("%s (did you mean %s://%s?)", want, scheme, net.JoinHostPort(rest, port))
		}
	}
	if strings.ContainsAny(host, "/ ") {
		return want
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return want + ": the port is not a number"
	}
	return ""
}

// fractionValue is a flag for a fraction in (0, 1], as 2/3 or 0.5.
type fractionValue float64

func (f *fractionValue) Set(s string) error {
	var v float64
	var err error
	if num, den, ok := strings.Cut(s, "/"); ok {
		var n, d float64
		n, err = strconv.ParseFloat(num, 64)
		if err == nil {
			d, err = strconv.ParseFloat(den, 64)
		}
		if err == nil && d != 0 {
			v = n / d
		}
	} else {
		v, err = strconv.ParseFloat(s, 64)
	}
	if err != nil || !(v > 0 && v <= 1) {
		return errors.New("use a fraction in (0, 1] such as 2/3 or 0.5")
	}
	*f = fractionValue(v)
	return nil
}

func (f *fractionValue) String() string {
	if math.Abs(float64(*f)-2.0/3) < 1e-9 {
		return "2/3"
	}
	return strconv.FormatFloat(float64(*f), 'g', 3, 64)
}

func (f *fractionValue) Type() string { return "fraction" }

// Default of --lease-trust: see leaseTrustUsage.
const defaultLeaseTrust = 2.0 / 3

const leaseTrustUsage = "stop CMD (SIGTERM, SIGKILL as on loss; exit 71) once no keep-alive has been answered for this fraction of the TTL: the server may be expiring the lease already"
