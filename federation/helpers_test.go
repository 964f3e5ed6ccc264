package federation_test

import (
	"github.com/engram-hs/engram/federation/xmatrix"
	"github.com/engram-hs/engram/stateres/signing"
)

func xmatrixSign(origin, dest string, key signing.Key, method, path string, body []byte) (string, error) {
	return xmatrix.Sign(origin, dest, key, method, path, body)
}
