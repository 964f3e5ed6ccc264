package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/tests3"
	"github.com/engram-hs/engram/media"
)

// media_storage_providers in the shape Synapse's S3 provider documents
// (capitalised YAML booleans included), from the file and from the
// environment; what Engram cannot honour is refused with a reason and
// without echoing the secret.
func TestMediaStorageProvidersConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "engram.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`media_storage_providers:
- module: s3_storage_provider.S3StorageProviderBackend
  store_local: True
  store_remote: False
  store_synchronous: True
  local_cache_max_size: 2G
  config:
    bucket: media
    region_name: eu-west-1
    endpoint_url: https://s3.example.org
    access_key_id: AKIA1
    secret_access_key: very-secret
    prefix: engram/
    storage_class: STANDARD_IA
    threadpool_size: 20
`)
	c, _, err := loadConfig(path, noEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := c.mediaConfig().Repo.ObjectStore
	if p == nil || !p.StoreLocal || p.StoreRemote || p.Bucket != "media" || p.Region != "eu-west-1" ||
		p.EndpointURL != "https://s3.example.org" || p.AccessKeyID != "AKIA1" || p.SecretAccessKey != "very-secret" ||
		p.Prefix != "engram/" || p.StorageClass != "STANDARD_IA" || p.LocalCacheMaxSize != 2<<30 || !p.Synchronous {
		t.Fatalf("parsed provider: %+v", p)
	}

	write("")
	if c, _, err := loadConfig(path, noEnv, nil); err != nil || c.mediaConfig().Repo.ObjectStore != nil {
		t.Fatalf("no provider configured: %+v %v", c.Media.StorageProvider, err)
	}
	env := envOf(map[string]string{envName("media_storage_providers"): `[{"module": "s3_storage_provider.S3StorageProviderBackend", "store_remote": true, "config": {"bucket": "b"}}]`})
	if c, _, err := loadConfig(path, env, nil); err != nil || c.Media.StorageProvider == nil || c.Media.StorageProvider.StoreLocal || !c.Media.StorageProvider.StoreRemote || c.Media.StorageProvider.Bucket != "b" {
		t.Fatalf("from the environment: %+v %v", c.Media.StorageProvider, err)
	} else if c.Media.StorageProvider.LocalCacheMaxSize != 0 || c.Media.StorageProvider.Synchronous {
		t.Fatalf("local_cache_max_size and store_synchronous not given, yet %+v (the defaults are the repository's and Synapse's, false)", c.Media.StorageProvider)
	}

	entry := func(module, stores, config string) string {
		return fmt.Sprintf("- module: %s\n  %s\n  config: {%s}\n", module, stores, config)
	}
	const s3 = "s3_storage_provider.S3StorageProviderBackend"
	for _, c := range []struct{ yaml, want string }{
		{entry("file_system.FileStorageProviderBackend", "store_local: true", "directory: /x"), "not supported"},
		{entry(s3, "store_local: true", "bucket: b, secret_access_key: very-secret, sse_customer_key: very-secret"), "sse_customer_key"},
		{entry(s3, "store_synchronous: true", "bucket: b"), "stores nothing"},
		{entry(s3, "store_local: true\n  local_cache_max_size: lots", "bucket: b"), "local_cache_max_size"},
		{entry(s3, "store_local: true\n  local_cache_max_size: 0", "bucket: b"), "local_cache_max_size"},
		{entry(s3, "store_local: true", "secret_access_key: very-secret"), "no bucket"},
		{entry(s3, "store_local: true", "bucket: b, endpoint_url: 'ftp://x'") + entry(s3, "store_local: true", "bucket: b"), "one storage provider"},
		{entry(s3, "store_local: true", "bucket: b, endpoint_url: 'ftp://x', secret_access_key: very-secret"), "endpoint_url"},
		{entry(s3, "store_local: true", "bucket: b, prefix: [x], secret_access_key: very-secret"), "prefix"},
	} {
		write("media_storage_providers:\n" + c.yaml)
		_, _, err := loadConfig(path, noEnv, nil)
		if err == nil || !strings.Contains(err.Error(), "media_storage_providers") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming the key and %q", c.yaml, err, c.want)
		} else if strings.Contains(err.Error(), "very-secret") {
			t.Errorf("%s: the error shows the secret: %v", c.yaml, err)
		}
	}
}

// thumbnail_sizes, dynamic_thumbnails and media_upload_limits in
// Synapse's shapes, with Synapse's defaults when absent.
func TestThumbnailAndUploadLimitConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "engram.yaml")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c, _, err := loadConfig(path, noEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	repo := c.mediaConfig().Repo
	if repo.ThumbnailSizes != nil || repo.DynamicThumbnails || repo.UploadLimits != nil {
		t.Fatalf("defaults: %+v %v %+v", repo.ThumbnailSizes, repo.DynamicThumbnails, repo.UploadLimits)
	}
	if err := os.WriteFile(path, []byte(`thumbnail_sizes:
  - width: 64
    height: 64
    method: crop
  - {width: 1024, height: 768}
dynamic_thumbnails: True
media_upload_limits:
  - time_period: 1h
    max_size: 100M
  - {time_period: "1w", max_size: 524288000}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _, err = loadConfig(path, noEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	repo = c.mediaConfig().Repo
	if want := []media.ThumbnailSize{{Width: 64, Height: 64, Method: "crop"}, {Width: 1024, Height: 768, Method: "scale"}}; !reflect.DeepEqual(repo.ThumbnailSizes, want) {
		t.Errorf("thumbnail_sizes: %+v, want %+v", repo.ThumbnailSizes, want)
	}
	if !repo.DynamicThumbnails {
		t.Error("dynamic_thumbnails: True not read")
	}
	if want := []media.UploadLimit{{TimePeriod: time.Hour, MaxSize: 100 << 20}, {TimePeriod: 7 * 24 * time.Hour, MaxSize: 524288000}}; !reflect.DeepEqual(repo.UploadLimits, want) {
		t.Errorf("media_upload_limits: %+v, want %+v", repo.UploadLimits, want)
	}
	env := envOf(map[string]string{envName("thumbnail_sizes"): `[{"width": 10, "height": 20, "method": "crop"}]`})
	if c, _, err := loadConfig(path, env, nil); err != nil || len(c.Media.ThumbnailSizes) != 1 || c.Media.ThumbnailSizes[0] != (media.ThumbnailSize{Width: 10, Height: 20, Method: "crop"}) {
		t.Errorf("thumbnail_sizes from the environment: %+v %v", c.Media.ThumbnailSizes, err)
	}
	for _, bad := range []string{
		"thumbnail_sizes:\n  - {width: 0, height: 32}\n",
		"thumbnail_sizes:\n  - {width: 32, height: 32, method: zoom}\n",
		"thumbnail_sizes:\n  - {width: 32, height: 32, methd: crop}\n",
		"thumbnail_sizes: 32x32\n",
		"dynamic_thumbnails: sometimes\n",
		"media_upload_limits:\n  - {time_period: forever, max_size: 1M}\n",
		"media_upload_limits:\n  - {time_period: 1h, max_size: lots}\n",
		"media_upload_limits:\n  - {time_period: 1h}\n",
	} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := loadConfig(path, noEnv, nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// engram serve with media_storage_providers naming a bucket on a real
// S3-compatible server: an upload is in the bucket under its hash, and
// with the local copies gone it is still downloaded intact. A bucket that
// does not exist stops the start with a message naming it.
func TestServeMediaInS3Bucket(t *testing.T) {
	srv := tests3.Start(t)
	bucket := srv.Bucket(t, "engram-media", "node1/")
	provider := func(bucket string) string {
		return fmt.Sprintf(`media_storage_providers:
  - module: s3_storage_provider.S3StorageProviderBackend
    store_local: true
    store_remote: true
    store_synchronous: true
    config:
      bucket: %s
      endpoint_url: %q
      region_name: us-east-1
      access_key_id: %q
      secret_access_key: %q
      prefix: "node1/"
`, bucket, srv.Endpoint, srv.AccessKey, srv.SecretKey)
	}
	dir := t.TempDir()
	listen := freeAddr(t)

	cfg := writeConfig(t, dir, listen, provider("no-such-bucket"))
	_, errOut, code := runTool(t, dir, nil, "serve", "--config", cfg)
	if code == 0 || !strings.Contains(errOut, "no-such-bucket") || !strings.Contains(errOut, "does not exist") || strings.Contains(errOut, srv.SecretKey) {
		t.Fatalf("serve with a missing bucket: exit %d\n%s", code, errOut)
	}

	cfg = writeConfig(t, dir, listen, provider("engram-media"))
	p := startServer(t, dir, listen, nil, "--config", cfg)
	defer p.stop()
	if _, e, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", "alice", "--password", "pw1"); code != 0 {
		t.Fatalf("register-user: %d %s", code, e)
	}
	_, token := loginToken(t, listen, "alice", "pw1")
	content := bytes.Repeat([]byte("engram media in a bucket "), 40000) // 1 MB
	mxc := uploadMedia(t, listen, token, content)

	sum := sha256.Sum256(content)
	hash := hex.EncodeToString(sum[:])
	if n, err := bucket.Stat(context.Background(), "blobs/"+hash[0:2]+"/"+hash[2:4]+"/"+hash); err != nil || n != int64(len(content)) {
		t.Fatalf("the upload is not in the bucket under its hash: %v", err)
	}
	// The local copy removed, as a cache clean-up would.
	if err := os.Remove(filepath.Join(dir, "data", "media", "blobs", hash[0:2], hash[2:4], hash)); err != nil {
		t.Fatal(err)
	}
	if got := downloadMedia(t, listen, token, mxc); !bytes.Equal(got, content) {
		t.Fatalf("download with the local copy gone: %d bytes, want %d", len(got), len(content))
	}
}

// uploadMedia uploads content and returns its mxc URI's server/mediaId.
func uploadMedia(t *testing.T, listen, token string, content []byte) string {
	t.Helper()
	st, mxc := tryUpload(t, listen, token, "application/octet-stream", content)
	if st != 200 {
		t.Fatalf("upload: %d %s", st, mxc)
	}
	return mxc
}

// tryUpload uploads content: 200 and server/mediaId, or the status and
// the answer.
func tryUpload(t *testing.T, listen, token, contentType string, content []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+listen+"/_matrix/media/v3/upload?filename=f.bin", bytes.NewReader(content))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		ContentURI string `json:"content_uri"`
	}
	_ = json.Unmarshal(body, &out)
	uri, ok := strings.CutPrefix(out.ContentURI, "mxc://")
	if resp.StatusCode != 200 || !ok {
		return resp.StatusCode, string(body)
	}
	return 200, uri
}

// downloadMedia downloads server/mediaId through the authenticated API.
func downloadMedia(t *testing.T, listen, token, mxc string) []byte {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+listen+"/_matrix/client/v1/media/download/"+mxc, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("download %s: %d %s", mxc, resp.StatusCode, body)
	}
	return body
}
