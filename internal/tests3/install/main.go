// Command install builds the S3 test server (tests3.Version) into the
// cache, so that tests find it; .ci/run calls it before the tests.
package main

import (
	"fmt"
	"os"

	"github.com/engram-hs/engram/internal/tests3"
)

func main() {
	bin, err := tests3.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("S3 test server:", bin)
}
