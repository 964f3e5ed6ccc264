package transport

import (
	"fmt"
	"net/netip"
	"syscall"
)

// DefaultIPRangeBlacklist is what outbound federation may not reach
// unless an operator says otherwise: loopback, private, link-local, CGNAT,
// documentation, benchmarking and multicast ranges (Synapse's
// ip_range_blacklist example list, which is what its operators set).
var DefaultIPRangeBlacklist = []string{
	"127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
	"100.64.0.0/10", "192.0.0.0/24", "169.254.0.0/16", "192.88.99.0/24",
	"198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
	"224.0.0.0/4", "::1/128", "fe80::/10", "fc00::/7", "2001:db8::/32",
	"ff00::/8", "fec0::/10",
}

// IPFilter decides, at dial time, whether an address may be connected to.
// An address in Allow is always allowed; otherwise one in Deny is refused.
// The unspecified addresses (0.0.0.0, ::) are always refused: connecting
// to them reaches this host.
type IPFilter struct {
	Deny  []netip.Prefix
	Allow []netip.Prefix
}

// NewIPFilter parses CIDR lists (a bare address is a /32 or /128).
func NewIPFilter(deny, allow []string) (*IPFilter, error) {
	f := &IPFilter{}
	var err error
	if f.Deny, err = parsePrefixes(deny); err != nil {
		return nil, err
	}
	if f.Allow, err = parsePrefixes(allow); err != nil {
		return nil, err
	}
	return f, nil
}

func parsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, err2 := netip.ParseAddr(s)
			if err2 != nil {
				return nil, fmt.Errorf("%q is not an IP range (CIDR such as 10.0.0.0/8) or address", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Allowed says whether ip may be connected to.
func (f *IPFilter) Allowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsUnspecified() {
		return false
	}
	if f == nil {
		return true
	}
	for _, p := range f.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	for _, p := range f.Deny {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// ErrBlockedIP is returned by dials the filter refused.
type ErrBlockedIP struct{ IP netip.Addr }

func (e ErrBlockedIP) Error() string {
	return fmt.Sprintf("outbound federation to %s is refused by ip_range_blacklist (add the range to ip_range_whitelist to allow it)", e.IP)
}

// control is a net.Dialer Control hook: it sees the address actually
// connected to, after every DNS lookup, so no resolution trick bypasses it.
func (f *IPFilter) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("outbound federation: unexpected dial address %q", address)
	}
	if !f.Allowed(ap.Addr()) {
		return ErrBlockedIP{ap.Addr()}
	}
	return nil
}
