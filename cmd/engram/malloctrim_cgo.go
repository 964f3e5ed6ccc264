//go:build linux && cgo

package main

// #include <malloc.h>
import "C"

// mallocTrim hands the free pages of C malloc's arenas back to the
// system (glibc's malloc_trim(0) also releases pages inside its arenas,
// not only at their top).
func mallocTrim() { C.malloc_trim(0) }
