//go:build !linux

package blobstore

import (
	"os"
	"time"
)

// accessTime falls back to the modification time where the access time
// is not read (a cache is then trimmed oldest stored first).
func accessTime(fi os.FileInfo) time.Time { return fi.ModTime() }
