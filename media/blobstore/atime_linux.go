package blobstore

import (
	"os"
	"syscall"
	"time"
)

// accessTime is when a blob was last used (FS.Open sets it).
func accessTime(fi os.FileInfo) time.Time {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	return fi.ModTime()
}
