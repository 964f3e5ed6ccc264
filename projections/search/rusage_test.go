package search_test

import "syscall"

type syscallRusage struct{}

// self is the process's user+system CPU seconds so far.
func (syscallRusage) self() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}
