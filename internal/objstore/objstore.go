// Package objstore is Engram's one client for S3-compatible object
// storage (AWS S3, MinIO, SeaweedFS, Ceph RGW, Garage, ...), used for
// media blobs and for backups. It wraps minio-go with the handful of
// operations those need, keeps every object under a configured prefix,
// and streams in both directions: a body of unknown size is sent as a
// multipart upload holding one part in memory at a time.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// ErrNotFound: no object has that key.
var ErrNotFound = errors.New("objstore: object not found")

// PartSize is the multipart part size for bodies of unknown length: the
// memory one such upload holds. (S3's minimum part is 5 MiB; 8 MiB parts
// allow objects up to 80 GB within S3's 10,000-part limit.)
const PartSize = 8 << 20

// Config names a bucket and how to reach it, with the keys of Synapse's
// s3_storage_provider (its "config:" block).
type Config struct {
	Bucket string // bucket (required)
	// EndpointURL is the service's URL, "https://s3.example.org" or
	// "http://127.0.0.1:9000"; empty means AWS S3.
	EndpointURL     string // endpoint_url
	Region          string // region_name
	AccessKeyID     string // access_key_id
	SecretAccessKey string // secret_access_key
	SessionToken    string // session_token
	// Prefix is prepended to every key ("engram/" keeps Engram's
	// objects apart from others in a shared bucket).
	Prefix string // prefix
	// StorageClass is the class new objects are stored in ("STANDARD_IA");
	// empty means the service's default (STANDARD).
	StorageClass string // storage_class
}

// Client reads and writes objects of one bucket under one prefix.
type Client struct {
	mc     *minio.Client
	bucket string
	prefix string
	class  string
	where  string // for error messages: "s3://bucket/prefix at endpoint"
}

// New makes a client; it does not contact the service (Check does).
func New(cfg Config) (*Client, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("objstore: no bucket configured")
	}
	host, secure := "s3.amazonaws.com", true
	if cfg.EndpointURL != "" {
		u, err := url.Parse(cfg.EndpointURL)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("objstore: endpoint_url %q: want http(s)://host[:port]", cfg.EndpointURL)
		}
		if u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("objstore: endpoint_url %q has a path; give the bucket as bucket and the rest as prefix", cfg.EndpointURL)
		}
		host, secure = u.Host, u.Scheme == "https"
	}
	var creds *credentials.Credentials
	if cfg.AccessKeyID != "" || cfg.SecretAccessKey != "" {
		creds = credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)
	} else {
		// Like boto3 (which Synapse's provider uses): the environment,
		// then the shared credentials file, then the instance's role.
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}, &credentials.IAM{},
		})
	}
	mc, err := minio.New(host, &minio.Options{Creds: creds, Secure: secure, Region: cfg.Region})
	if err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	prefix := strings.TrimLeft(cfg.Prefix, "/")
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Client{mc: mc, bucket: cfg.Bucket, prefix: prefix, class: cfg.StorageClass, where: fmt.Sprintf("s3://%s/%s at %s", cfg.Bucket, prefix, host)}, nil
}

// String names the bucket and prefix, for logs and messages.
func (c *Client) String() string { return c.where }

// Check says whether the bucket can be reached; the error says what to
// fix.
func (c *Client) Check(ctx context.Context) error {
	ok, err := c.mc.BucketExists(ctx, c.bucket)
	if err != nil {
		return fmt.Errorf("objstore: cannot reach %s: %w (check endpoint_url, the credentials and region_name)", c.where, err)
	}
	if !ok {
		return fmt.Errorf("objstore: bucket %q does not exist at %s: create it first", c.bucket, c.where)
	}
	return nil
}

// MakeBucket creates the bucket (for tests and first setup); an existing
// bucket of ours is not an error.
func (c *Client) MakeBucket(ctx context.Context) error {
	err := c.mc.MakeBucket(ctx, c.bucket, minio.MakeBucketOptions{})
	if err != nil {
		if ok, e := c.mc.BucketExists(ctx, c.bucket); e == nil && ok {
			return nil
		}
		return fmt.Errorf("objstore: create bucket %s: %w", c.bucket, err)
	}
	return nil
}

// Put stores r under key. size is r's length, or -1 when unknown (then
// the body goes up in PartSize parts, one in memory at a time). A reader
// that is an io.ReaderAt of known size (a file) is sent in sections read
// from it directly, without buffering.
func (c *Client) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error {
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	_, err := c.mc.PutObject(ctx, c.bucket, c.prefix+key, r, size, minio.PutObjectOptions{
		ContentType:  contentType,
		StorageClass: c.class,
		PartSize:     PartSize,
		// One part in flight: the memory bound above holds, and the
		// disk or network is the limit anyway.
		NumThreads: 1,
	})
	if err != nil {
		return fmt.Errorf("objstore: put %s in %s: %w", key, c.where, err)
	}
	return nil
}

// Object is an object being read: seekable (each seek after a read is a
// new ranged request), so downloads can answer Range requests.
type Object interface {
	io.ReadSeekCloser
}

// Get opens the object under key and returns it with its size, or
// ErrNotFound. Bytes are fetched as they are read.
func (c *Client) Get(ctx context.Context, key string) (Object, int64, error) {
	o, err := c.mc.GetObject(ctx, c.bucket, c.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, 0, c.mapErr("get", key, err)
	}
	st, err := o.Stat()
	if err != nil {
		o.Close()
		return nil, 0, c.mapErr("get", key, err)
	}
	return o, st.Size, nil
}

// Stat returns the size of the object under key, or ErrNotFound.
func (c *Client) Stat(ctx context.Context, key string) (int64, error) {
	st, err := c.mc.StatObject(ctx, c.bucket, c.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return 0, c.mapErr("stat", key, err)
	}
	return st.Size, nil
}

// Delete removes the object under key; a missing object is not an error.
func (c *Client) Delete(ctx context.Context, key string) error {
	err := c.mc.RemoveObject(ctx, c.bucket, c.prefix+key, minio.RemoveObjectOptions{})
	if err != nil && !errors.Is(c.mapErr("delete", key, err), ErrNotFound) {
		return fmt.Errorf("objstore: delete %s in %s: %w", key, c.where, err)
	}
	return nil
}

// List calls fn with every key (without the client's prefix) that starts
// with prefix, in lexical order, until fn returns false.
func (c *Client) List(ctx context.Context, prefix string, fn func(key string, size int64) bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn stops early
	for o := range c.mc.ListObjects(ctx, c.bucket, minio.ListObjectsOptions{Prefix: c.prefix + prefix, Recursive: true}) {
		if o.Err != nil {
			return fmt.Errorf("objstore: list %s in %s: %w", prefix, c.where, o.Err)
		}
		if !fn(strings.TrimPrefix(o.Key, c.prefix), o.Size) {
			return nil
		}
	}
	return nil
}

func (c *Client) mapErr(op, key string, err error) error {
	switch minio.ToErrorResponse(err).Code {
	case minio.NoSuchKey, "NotFound":
		return ErrNotFound
	case minio.NoSuchBucket:
		return fmt.Errorf("objstore: %s %s: bucket %q does not exist at %s: create it first", op, key, c.bucket, c.where)
	}
	return fmt.Errorf("objstore: %s %s in %s: %w", op, key, c.where, err)
}
