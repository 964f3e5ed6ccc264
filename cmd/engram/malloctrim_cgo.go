//go:build linux && cgo

package main

// #include <malloc.h>
import "C"

// mallocTrim hands the free pages of C malloc's arenas back to the
// system (glibc's malloc_trim(0) also releases pages inside its arenas,
// not only at their top).
func mallocTrim() { C.malloc_trim(0) }

// mallocInUse is the bytes C malloc has handed out and not had back, in
// its arenas and in chunks of their own (glibc's mallinfo2). It walks
// every arena under its lock: for a scrape, not for a hot path.
func mallocInUse() (uint64, bool) {
	mi := C.mallinfo2()
	return uint64(mi.uordblks + mi.hblkhd), true
}
