package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// slowDisk is a node's data directory on a FUSE loopback filesystem served
// by this process, so the campaign can make that disk slow while the node
// runs: each fsync waits delay and each write delay/10 before it reaches
// the real directory underneath. With delay 0 it passes everything
// straight through. A real filesystem in the kernel's path, so engram,
// Pebble and raft are not told anything: they meet a slow disk.
type slowDisk struct {
	delay  atomic.Int64 // nanoseconds
	server *fuse.Server
	mnt    string
}

// mountSlowDisk serves backing at mnt (both directories must exist). It
// needs root (mount(2) directly; no fusermount).
func mountSlowDisk(backing, mnt string) (*slowDisk, error) {
	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		return nil, err
	}
	d := &slowDisk{mnt: mnt}
	lb := root.(*fs.LoopbackNode)
	top := &slowNode{LoopbackNode: lb, d: d}
	lb.RootData.RootNode = top
	d.server, err = fs.Mount(mnt, top, &fs.Options{MountOptions: fuse.MountOptions{
		DirectMountStrict: true, // we are root; there may be no fusermount
		FsName:            backing,
		Name:              "engram-slowdisk",
	}})
	if err != nil {
		return nil, fmt.Errorf("mounting the slow-disk FUSE filesystem at %s (needs root and /dev/fuse): %w", mnt, err)
	}
	return d, nil
}

func (d *slowDisk) set(delay time.Duration) { d.delay.Store(int64(delay)) }

func (d *slowDisk) wait(div int64) {
	if ns := d.delay.Load(); ns > 0 {
		time.Sleep(time.Duration(ns / div))
	}
}

func (d *slowDisk) unmount() {
	if err := d.server.Unmount(); err != nil {
		// A process still holding files open (a node that did not stop):
		// detach, so the directory can be removed.
		syscall.Unmount(d.mnt, syscall.MNT_DETACH)
	}
}

// slowNode is a loopback node whose writes and fsyncs wait first. The
// bridge asks the node before the file handle, so these catch every
// write and fsync of every file.
type slowNode struct {
	*fs.LoopbackNode
	d *slowDisk
}

var (
	_ fs.NodeWriter      = (*slowNode)(nil)
	_ fs.NodeFsyncer     = (*slowNode)(nil)
	_ fs.NodeWrapChilder = (*slowNode)(nil)
)

func (n *slowNode) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &slowNode{LoopbackNode: ops.(*fs.LoopbackNode), d: n.d}
}

func (n *slowNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	w, ok := f.(fs.FileWriter)
	if !ok {
		return 0, syscall.EBADF
	}
	n.d.wait(10)
	return w.Write(ctx, data, off)
}

func (n *slowNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	n.d.wait(1)
	if s, ok := f.(fs.FileFsyncer); ok {
		return s.Fsync(ctx, flags)
	}
	if s, ok := f.(fs.FileFsyncdirer); ok {
		return s.Fsyncdir(ctx, flags)
	}
	// No handle (the kernel syncs an inode it has no open file for).
	fd, err := syscall.Open(filepath.Join(n.RootData.Path, n.Path(nil)), syscall.O_RDONLY, 0)
	if err != nil {
		return fs.ToErrno(err)
	}
	defer syscall.Close(fd)
	return fs.ToErrno(syscall.Fsync(fd))
}
