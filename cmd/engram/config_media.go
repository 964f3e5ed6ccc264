package main

import (
	"path/filepath"

	apimedia "github.com/engram-hs/engram/api/media"
)

// mediaSettings are the media repository's keys (Synapse's names).
type mediaSettings struct {
	AuthenticatedMedia  *bool // enable_authenticated_media; nil means true (Synapse's default)
	MaxImagePixels      int64
	URLPreviewEnabled   bool
	URLPreviewBlacklist []string
	URLPreviewWhitelist []string
	MaxSpiderSize       int64
	LocalLifetime       string
	RemoteLifetime      string
	Peers               []string
	PeerSecret          string
}

func init() {
	options = append(options, mediaOptions...)
}

var mediaOptions = []option{
	{"enable_authenticated_media", "true or false", func(c *Config, v value) error {
		var b bool
		if err := boolean(func(*Config) *bool { return &b })(c, v); err != nil {
			return err
		}
		c.Media.AuthenticatedMedia = &b
		return nil
	}},
	{"max_image_pixels", `a number of pixels, optionally with a K, M or G suffix ("32M")`, func(c *Config, v value) error {
		n, err := parseSize(v.scalar)
		if v.isList || err != nil || n == 0 {
			return errForm
		}
		c.Media.MaxImagePixels = n
		return nil
	}},
	{"url_preview_enabled", "true or false", boolean(func(c *Config) *bool { return &c.Media.URLPreviewEnabled })},
	{"url_preview_ip_range_blacklist", `a list of CIDR ranges ("127.0.0.0/8")`, list(func(c *Config) *[]string { return &c.Media.URLPreviewBlacklist })},
	{"url_preview_ip_range_whitelist", `a list of CIDR ranges`, list(func(c *Config) *[]string { return &c.Media.URLPreviewWhitelist })},
	{"max_spider_size", `a size in bytes, or with a K, M or G suffix ("10M")`, func(c *Config, v value) error {
		n, err := parseSize(v.scalar)
		if v.isList || err != nil {
			return errForm
		}
		c.Media.MaxSpiderSize = n
		return nil
	}},
	{"media_retention.local_media_lifetime", `a duration ("90d"), or empty to keep local media forever`, lifetime(func(c *Config) *string { return &c.Media.LocalLifetime })},
	{"media_retention.remote_media_lifetime", `a duration ("14d"), or empty to keep cached remote media forever`, lifetime(func(c *Config) *string { return &c.Media.RemoteLifetime })},
	{"cluster.media_peers", `a list of the other nodes' client API base URLs ("http://10.0.0.2:8008")`, list(func(c *Config) *[]string { return &c.Media.Peers })},
	{"cluster.media_secret", "a shared secret the nodes of a cluster use to fetch media blobs from each other", str(func(c *Config) *string { return &c.Media.PeerSecret })},
}

func lifetime(p func(*Config) *string) func(*Config, value) error {
	return func(c *Config, v value) error {
		if v.isList {
			return errForm
		}
		if v.scalar != "" {
			if _, err := parseDuration(v.scalar); err != nil {
				return errForm
			}
		}
		*p(c) = v.scalar
		return nil
	}
}

// mediaConfig is the API's media configuration.
func (c Config) mediaConfig() apimedia.Config {
	m := c.Media
	mc := apimedia.Config{
		Preview: apimedia.PreviewConfig{
			Enabled:       m.URLPreviewEnabled,
			Blacklist:     m.URLPreviewBlacklist,
			Whitelist:     m.URLPreviewWhitelist,
			MaxSpiderSize: m.MaxSpiderSize,
		},
	}
	mc.Repo.Dir = filepath.Join(c.DataDir, "media")
	mc.Repo.MaxUploadSize = c.MaxUploadSize
	mc.Repo.MaxImagePixels = m.MaxImagePixels
	mc.Repo.AuthenticatedMedia = m.AuthenticatedMedia == nil || *m.AuthenticatedMedia
	if m.LocalLifetime != "" {
		mc.Repo.LocalMediaLifetime, _ = parseDuration(m.LocalLifetime)
	}
	if m.RemoteLifetime != "" {
		mc.Repo.RemoteMediaLifetime, _ = parseDuration(m.RemoteLifetime)
	}
	mc.Repo.Peers = m.Peers
	mc.Repo.PeerSecret = m.PeerSecret
	return mc
}
