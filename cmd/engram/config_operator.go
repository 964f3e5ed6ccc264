package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/api/ratelimit"
)

// The operator's part of the configuration: Synapse's rate limits
// (rc_*), trusted reverse proxies, server notices, and the checks serve
// makes before it starts.

func init() {
	options = append(options, operatorOptions()...)
}

// rateRule is one of Synapse's rc_* rules: KEY.per_second and
// KEY.burst_count.
func rateRule(key string, p func(*ratelimit.Config) *ratelimit.Rule) []option {
	return []option{
		{key + ".per_second", "a positive number, or 0 for no limit", func(c *Config, v value) error {
			f, err := strconv.ParseFloat(v.scalar, 64)
			if v.isList || err != nil || f < 0 {
				return errForm
			}
			p(&c.RC).PerSecond = f
			return nil
		}},
		{key + ".burst_count", "a positive number, or 0 for no limit", func(c *Config, v value) error {
			f, err := strconv.ParseFloat(v.scalar, 64)
			if v.isList || err != nil || f < 0 {
				return errForm
			}
			p(&c.RC).BurstCount = f
			return nil
		}},
	}
}

func operatorOptions() []option {
	var opts []option
	for _, r := range []struct {
		key string
		p   func(*ratelimit.Config) *ratelimit.Rule
	}{
		{"rc_message", func(c *ratelimit.Config) *ratelimit.Rule { return &c.Message }},
		{"rc_registration", func(c *ratelimit.Config) *ratelimit.Rule { return &c.Registration }},
		{"rc_login.address", func(c *ratelimit.Config) *ratelimit.Rule { return &c.LoginAddress }},
		{"rc_login.account", func(c *ratelimit.Config) *ratelimit.Rule { return &c.LoginAccount }},
		{"rc_login.failed_attempts", func(c *ratelimit.Config) *ratelimit.Rule { return &c.LoginFailedAttempts }},
		{"rc_joins.local", func(c *ratelimit.Config) *ratelimit.Rule { return &c.JoinsLocal }},
		{"rc_joins.remote", func(c *ratelimit.Config) *ratelimit.Rule { return &c.JoinsRemote }},
		{"rc_invites.per_room", func(c *ratelimit.Config) *ratelimit.Rule { return &c.InvitesPerRoom }},
		{"rc_invites.per_user", func(c *ratelimit.Config) *ratelimit.Rule { return &c.InvitesPerUser }},
		{"rc_invites.per_issuer", func(c *ratelimit.Config) *ratelimit.Rule { return &c.InvitesPerIssuer }},
		{"rc_admin_redaction", func(c *ratelimit.Config) *ratelimit.Rule { return &c.AdminRedaction }},
		{"rc_media_create", func(c *ratelimit.Config) *ratelimit.Rule { return &c.MediaCreate }},
	} {
		opts = append(opts, rateRule(r.key, r.p)...)
	}
	opts = append(opts,
		option{"x_forwarded", "true or false (true: the client listener is behind a reverse proxy; X-Forwarded-For names the client)", boolean(func(c *Config) *bool { return &c.XForwarded })},
		option{"trusted_proxies", `a list of addresses or CIDR ranges ("10.0.0.0/8") of reverse proxies whose X-Forwarded-For is believed`, func(c *Config, v value) error {
			items := v.list
			if !v.isList {
				items = strings.Split(v.scalar, ",")
			}
			c.TrustedProxies = nil
			for _, it := range items {
				if it = strings.TrimSpace(it); it == "" {
					continue
				}
				p, err := netip.ParsePrefix(it)
				if err != nil {
					a, aerr := netip.ParseAddr(it)
					if aerr != nil {
						return errForm
					}
					p = netip.PrefixFrom(a, a.BitLen())
				}
				c.TrustedProxies = append(c.TrustedProxies, p.Masked())
			}
			return nil
		}},
		option{"server_notices.system_mxid_localpart", `a user ID localpart ("notices"); empty disables server notices`, str(func(c *Config) *string { return &c.ServerNotices.SystemMXIDLocalpart })},
		option{"server_notices.system_mxid_display_name", "a display name", str(func(c *Config) *string { return &c.ServerNotices.SystemMXIDDisplayName })},
		option{"server_notices.system_mxid_avatar_url", "an mxc:// URL", str(func(c *Config) *string { return &c.ServerNotices.SystemMXIDAvatarURL })},
		option{"server_notices.room_name", "a room name", str(func(c *Config) *string { return &c.ServerNotices.RoomName })},
		option{"server_notices.room_topic", "a room topic", str(func(c *Config) *string { return &c.ServerNotices.RoomTopic })},
	)
	return opts
}

// checkRegistration is Synapse's rule: open registration without any
// verification (Engram verifies no email or phone, so: without a
// registration token) is refused unless the operator says so.
func checkRegistration(c Config) error {
	if c.EnableRegistration && !c.RegistrationRequiresToken && !c.EnableRegistrationWithoutVerification {
		return fmt.Errorf("config: enable_registration is true without verification: anyone could create accounts here, a known vector for spam and abuse. " +
			"Set registration_requires_token: true (and create tokens with the admin API), or, to really allow open registration, set enable_registration_without_verification: true")
	}
	return nil
}

// testKnobs are ENGRAM_* variables read by tests and benchmarks, not
// configuration keys.
var testKnobs = []string{"ENGRAM_BENCH_", "ENGRAM_ROOMS_BENCH_", "ENGRAM_PROJECTIONS_CRASH_", "ENGRAM_LOG_CRASH_", "ENGRAM_APIBENCH_", "ENGRAM_COMPLEMENT_"}

// unknownEnv warns about ENGRAM_* variables that set no key (a typo
// silently ignored is a setting the operator believes in).
func unknownEnv(environ []string) []string {
	known := map[string]bool{}
	for _, o := range options {
		known[envName(o.key)] = true
	}
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "ENGRAM_") || known[name] {
			continue
		}
		knob := false
		for _, p := range testKnobs {
			knob = knob || strings.HasPrefix(name, p)
		}
		if !knob {
			out = append(out, fmt.Sprintf("environment variable %s sets no configuration key and is ignored (keys are ENGRAM_<KEY>, e.g. ENGRAM_SERVER_NAME)", name))
		}
	}
	return out
}

// withFirstRunValues writes the flags of the first run into the generated
// configuration (server_name, listen, ...), so that the file says what
// the server runs with and a later start without the flags, or a tool
// reading the file, agrees with it. data_dir stays "." (the file lives in
// it).
func withFirstRunValues(file []byte, flags map[string]string) []byte {
	lines := strings.Split(string(file), "\n")
	for key, val := range flags {
		if key == "data_dir" {
			continue
		}
		done := false
		for i, l := range lines {
			if strings.HasPrefix(l, key+":") || strings.HasPrefix(l, "# "+key+":") {
				lines[i] = fmt.Sprintf("%s: %q", key, val)
				done = true
				break
			}
		}
		if !done {
			lines = append(lines, fmt.Sprintf("%s: %q", key, val))
		}
	}
	return []byte(strings.Join(lines, "\n"))
}
