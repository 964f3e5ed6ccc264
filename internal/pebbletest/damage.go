// Package pebbletest damages Pebble tables on purpose, for the tests of
// how damage is found, reported and healed.
package pebbletest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// DamageBlock flips 64 bytes in the middle of a data block, in one of the
// tables of the closed Pebble directory dir, whose keys all start with
// prefix (so nothing else is damaged), and returns the table's file name.
func DamageBlock(t testing.TB, dir string, prefix []byte) string {
	t.Helper()
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	for _, path := range ssts {
		off, ok := blockOf(t, path, prefix)
		if !ok {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i := off; i < off+64; i++ {
			b[i] ^= 0xff
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return filepath.Base(path)
	}
	t.Fatalf("no table holds a data block of keys starting with %q only (tables: %v)", prefix, ssts)
	return ""
}

// blockOf finds, in the table at path, a data block whose keys all start
// with prefix, and returns an offset in its middle.
func blockOf(t testing.TB, path string, prefix []byte) (int, bool) {
	f, err := vfs.Default.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	readable, err := sstable.NewSimpleReadable(f)
	if err != nil {
		t.Fatal(err)
	}
	r, err := sstable.NewReader(context.Background(), readable, sstable.ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	layout, err := r.Layout()
	if err != nil {
		t.Fatal(err)
	}
	// The verbose description lists each block ("data  offset: N
	// length: L") followed by its records, as fmtKV formats them.
	desc := layout.Describe(true, r, func(k *pebble.InternalKey, _ []byte) string {
		return fmt.Sprintf("KEY %x", k.UserKey)
	})
	type block struct {
		off, length int
		keys, ok    int
	}
	var blocks []*block
	var cur *block
	for _, line := range strings.Split(desc, "\n") {
		if m := blockHeader.FindStringSubmatch(line); m != nil {
			cur = nil // another kind of block
			if m[1] == "data" {
				off, _ := strconv.Atoi(m[2])
				length, _ := strconv.Atoi(m[3])
				cur = &block{off: off, length: length}
				blocks = append(blocks, cur)
			}
			continue
		}
		if i := strings.Index(line, "KEY "); i >= 0 && cur != nil {
			cur.keys++
			if k, err := hexDecode(line[i+4:]); err == nil && bytes.HasPrefix(k, prefix) {
				cur.ok++
			}
		}
	}
	for _, b := range blocks {
		if b.keys > 0 && b.ok == b.keys && b.length > 256 {
			return b.off + b.length/2 - 32, true
		}
	}
	return 0, false
}

var blockHeader = regexp.MustCompile(`(\S+)  offset: (\d+)  length: (\d+)`)

func hexDecode(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	out := make([]byte, len(s)/2)
	for i := range out {
		v, err := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
		if err != nil {
			return nil, err
		}
		out[i] = byte(v)
	}
	return out, nil
}
