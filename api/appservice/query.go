package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// PingError is a failed ping, in the shape the client-server ping
// endpoint reports (spec: POST /_matrix/client/v1/appservice/{id}/ping).
type PingError struct {
	HTTPStatus int    // what the client is answered
	ErrCode    string // M_BAD_STATUS, M_CONNECTION_FAILED or M_CONNECTION_TIMEOUT
	Status     int    // the appservice's status, for M_BAD_STATUS
	Body       string // the appservice's body, for M_BAD_STATUS
	Err        error
}

func (e *PingError) Error() string {
	if e.ErrCode == "M_BAD_STATUS" {
		return "the appservice answered the ping with HTTP " + http.StatusText(e.Status)
	}
	return "the appservice could not be reached: " + e.Err.Error()
}

// Ping calls the appservice's /_matrix/app/v1/ping and reports how long
// it took.
func (r *Registration) Ping(ctx context.Context, c *http.Client, txnID string) (time.Duration, error) {
	body := []byte("{}")
	if txnID != "" {
		body, _ = json.Marshal(map[string]string{"transaction_id": txnID})
	}
	start := time.Now()
	status, resp, err := request(ctx, c, r.HSToken, http.MethodPost, strings.TrimSuffix(*r.URL, "/")+"/_matrix/app/v1/ping", body)
	took := time.Since(start)
	var ne interface{ Timeout() bool }
	switch {
	case err != nil && (errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())):
		return took, &PingError{HTTPStatus: http.StatusGatewayTimeout, ErrCode: "M_CONNECTION_TIMEOUT", Err: err}
	case err != nil:
		return took, &PingError{HTTPStatus: http.StatusBadGateway, ErrCode: "M_CONNECTION_FAILED", Err: err}
	case status/100 != 2:
		return took, &PingError{HTTPStatus: http.StatusBadGateway, ErrCode: "M_BAD_STATUS", Status: status, Body: string(resp)}
	}
	return took, nil
}

// QueryAlias asks the appservice to create a room for an alias in its
// namespace (spec: GET /_matrix/app/v1/rooms/{roomAlias}). True when it
// says it did; the caller then looks the alias up again.
func (r *Registration) QueryAlias(ctx context.Context, c *http.Client, alias string) bool {
	return r.query(ctx, c, "/_matrix/app/v1/rooms/"+url.PathEscape(alias))
}

// QueryUser asks the appservice whether a user in its namespace exists
// (spec: GET /_matrix/app/v1/users/{userId}), creating it if it wants.
func (r *Registration) QueryUser(ctx context.Context, c *http.Client, userID string) bool {
	return r.query(ctx, c, "/_matrix/app/v1/users/"+url.PathEscape(userID))
}

func (r *Registration) query(ctx context.Context, c *http.Client, path string) bool {
	if !r.Pushes() {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	status, _, err := request(ctx, c, r.HSToken, http.MethodGet, strings.TrimSuffix(*r.URL, "/")+path, nil)
	return err == nil && status/100 == 2
}
