package transport

import (
	"errors"
	"net/http"
	"time"
)

// Plain returns an unsigned HTTP client for URLs a federation answer
// points at (the redirect form of the media endpoints): the same dialer,
// so the same IP filter, and the same trusted roots.
func (c *Client) Plain() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         c.dialer.DialContext,
			TLSClientConfig:     c.tlsCfg.Clone(),
			ForceAttemptHTTP2:   true,
			TLSHandshakeTimeout: 10 * time.Second,
			DisableKeepAlives:   true, // one request per client
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
}
