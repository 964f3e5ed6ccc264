package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	apimedia "github.com/engram-hs/engram/api/media"
	"github.com/engram-hs/engram/internal/objstore"
	"github.com/engram-hs/engram/media"
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
	// StorageProvider is media_storage_providers' one entry (nil: none).
	StorageProvider   *media.ObjectStore
	ThumbnailSizes    []media.ThumbnailSize // nil: Synapse's default list
	DynamicThumbnails bool
	UploadLimits      []media.UploadLimit
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
	{"media_storage_providers", storageProviderForm, parseStorageProviders},
	{"thumbnail_sizes", `a list of {width: 32, height: 32, method: crop or scale}`, parseThumbnailSizes},
	{"dynamic_thumbnails", "true or false", boolean(func(c *Config) *bool { return &c.Media.DynamicThumbnails })},
	{"media_upload_limits", `a list of {time_period: "1h", max_size: "100M"}`, parseUploadLimits},
}

// mappingItems are the entries of a list of mappings: from YAML each
// entry as JSON, from the environment or a flag one JSON list.
func mappingItems(v value) ([]string, error) {
	if v.isList {
		return v.list, nil
	}
	if strings.TrimSpace(v.scalar) == "" {
		return nil, nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(v.scalar), &raw); err != nil {
		return nil, errForm
	}
	items := make([]string, len(raw))
	for i, r := range raw {
		items[i] = string(r)
	}
	return items, nil
}

// strictDecode reads one JSON entry, refusing unknown fields.
func strictDecode(item string, out any) error {
	dec := json.NewDecoder(strings.NewReader(item))
	dec.DisallowUnknownFields()
	return dec.Decode(out)
}

// parseThumbnailSizes reads Synapse's thumbnail_sizes (method defaults
// to scale, as in Synapse). An empty list keeps the default sizes.
func parseThumbnailSizes(c *Config, v value) error {
	items, err := mappingItems(v)
	if err != nil {
		return err
	}
	c.Media.ThumbnailSizes = nil
	for _, it := range items {
		var s struct {
			Width  int    `json:"width"`
			Height int    `json:"height"`
			Method string `json:"method"`
		}
		if err := strictDecode(it, &s); err != nil || s.Width <= 0 || s.Height <= 0 || s.Width > 10000 || s.Height > 10000 {
			return errForm
		}
		switch s.Method {
		case "":
			s.Method = "scale"
		case "crop", "scale":
		default:
			return errForm
		}
		c.Media.ThumbnailSizes = append(c.Media.ThumbnailSizes, media.ThumbnailSize{Width: s.Width, Height: s.Height, Method: s.Method})
	}
	return nil
}

// parseUploadLimits reads Synapse's media_upload_limits: each entry
// bounds what one user may upload in any time_period.
func parseUploadLimits(c *Config, v value) error {
	items, err := mappingItems(v)
	if err != nil {
		return err
	}
	c.Media.UploadLimits = nil
	for _, it := range items {
		var l struct {
			TimePeriod json.RawMessage `json:"time_period"`
			MaxSize    json.RawMessage `json:"max_size"`
		}
		if err := strictDecode(it, &l); err != nil {
			return errForm
		}
		period, err := parseDuration(jsonScalar(l.TimePeriod))
		if err != nil || period <= 0 {
			return errForm
		}
		size, err := parseSize(jsonScalar(l.MaxSize))
		if err != nil || size <= 0 {
			return errForm
		}
		c.Media.UploadLimits = append(c.Media.UploadLimits, media.UploadLimit{TimePeriod: period, MaxSize: size})
	}
	return nil
}

// jsonScalar is a JSON string's text or a number's digits ("" otherwise).
func jsonScalar(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

const storageProviderForm = `a list of one {module: s3_storage_provider.S3StorageProviderBackend, store_local: true, store_remote: true, store_synchronous: true, config: {bucket: ..., endpoint_url: ..., region_name: ..., access_key_id: ..., secret_access_key: ..., prefix: ...}}`

// s3ProviderModule is the module name of Synapse's S3 storage provider
// (synapse-s3-storage-provider), the one provider Engram implements.
const s3ProviderModule = "s3_storage_provider.S3StorageProviderBackend"

// parseStorageProviders reads media_storage_providers as Synapse's S3
// provider documents it, so an existing entry carries over. Keys Engram
// cannot honour are refused rather than ignored (sse_customer_key
// ignored would store media unencrypted).
func parseStorageProviders(c *Config, v value) error {
	items, err := mappingItems(v)
	if err != nil {
		return errors.New("expected a JSON list of one provider entry")
	}
	c.Media.StorageProvider = nil
	switch len(items) {
	case 0:
		return nil
	case 1:
	default:
		return errors.New("Engram supports one storage provider (an S3 bucket); list only one")
	}
	var named struct {
		Module string `json:"module"`
	}
	if err := json.Unmarshal([]byte(items[0]), &named); err != nil {
		return fmt.Errorf("expected %s: %v", storageProviderForm, strings.TrimPrefix(err.Error(), "json: "))
	}
	if named.Module != s3ProviderModule {
		return fmt.Errorf("module %q is not supported; Engram implements %s (an S3-compatible bucket)", named.Module, s3ProviderModule)
	}
	var p struct {
		Module string `json:"module"`
		// Synapse's defaults: false.
		StoreLocal       bool `json:"store_local"`
		StoreRemote      bool `json:"store_remote"`
		StoreSynchronous bool `json:"store_synchronous"`
		// Engram's own: the bound of the local copies ("10G").
		LocalCacheMaxSize json.RawMessage `json:"local_cache_max_size"`
		Config            struct {
			Bucket          string `json:"bucket"`
			RegionName      string `json:"region_name"`
			EndpointURL     string `json:"endpoint_url"`
			AccessKeyID     string `json:"access_key_id"`
			SecretAccessKey string `json:"secret_access_key"`
			SessionToken    string `json:"session_token"`
			Prefix          string `json:"prefix"`
			StorageClass    string `json:"storage_class"`
			// The provider's upload thread pool; Engram sends one
			// part at a time and needs none.
			ThreadpoolSize int `json:"threadpool_size"`
		} `json:"config"`
	}
	if err := strictDecode(items[0], &p); err != nil {
		if strings.Contains(err.Error(), "unknown field") {
			return fmt.Errorf("%v: Engram's S3 provider takes module, store_local, store_remote, store_synchronous, local_cache_max_size and config {bucket, region_name, endpoint_url, access_key_id, secret_access_key, session_token, prefix, storage_class, threadpool_size} (no server-side encryption keys)", strings.TrimPrefix(err.Error(), "json: "))
		}
		return fmt.Errorf("expected %s: %v", storageProviderForm, strings.TrimPrefix(err.Error(), "json: "))
	}
	if !p.StoreLocal && !p.StoreRemote {
		return errors.New("the storage provider stores nothing: set store_local and/or store_remote to true")
	}
	var cacheMax int64
	if raw := strings.Trim(string(p.LocalCacheMaxSize), `"`); raw != "" && raw != "null" {
		if cacheMax, err = parseSize(raw); err != nil || cacheMax == 0 {
			return fmt.Errorf("local_cache_max_size %s: want a size in bytes, or with a K, M or G suffix (\"10G\")", p.LocalCacheMaxSize)
		}
	}
	oc := objstore.Config{Bucket: p.Config.Bucket, EndpointURL: p.Config.EndpointURL, Region: p.Config.RegionName,
		AccessKeyID: p.Config.AccessKeyID, SecretAccessKey: p.Config.SecretAccessKey, SessionToken: p.Config.SessionToken,
		Prefix: p.Config.Prefix, StorageClass: p.Config.StorageClass}
	if _, err := objstore.New(oc); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	c.Media.StorageProvider = &media.ObjectStore{Config: oc, StoreLocal: p.StoreLocal, StoreRemote: p.StoreRemote,
		Synchronous: p.StoreSynchronous, LocalCacheMaxSize: cacheMax}
	return nil
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
	mc.Repo.ObjectStore = m.StorageProvider
	mc.Repo.ThumbnailSizes = m.ThumbnailSizes
	mc.Repo.DynamicThumbnails = m.DynamicThumbnails
	mc.Repo.UploadLimits = m.UploadLimits
	return mc
}
