//go:build !linux

package log

import (
	"errors"
	"os"
)

func fallocate(*os.File, int64) error { return errors.New("fallocate: not supported here") }
