// Package mxclient is the small Matrix client-server API client the bench
// tools drive homeservers with: only the endpoints they use, and errors
// that keep the Matrix errcode so that reports can count them.
package mxclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Error is a Matrix error answer (or a transport failure, with Errcode
// "M_TRANSPORT" and Status 0).
type Error struct {
	Status       int
	Errcode      string
	Message      string
	RetryAfterMS int64
}

func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.Errcode, e.Message)
}

// Errcode returns the Matrix errcode of err, "M_TRANSPORT" for network
// failures, "" for nil.
func Errcode(err error) string {
	if err == nil {
		return ""
	}
	var me *Error
	if errors.As(err, &me) {
		return me.Errcode
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return "M_TIMEOUT"
	}
	return "M_TRANSPORT"
}

// NewHTTPClient returns an HTTP client that keeps enough idle connections
// for many concurrent users of one server.
func NewHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2048,
		MaxIdleConnsPerHost: 2048,
		IdleConnTimeout:     90 * time.Second,
	}}
}

// Client acts as one user (or nobody, before Register/Login).
type Client struct {
	Base     string // http://127.0.0.1:8008
	HTTP     *http.Client
	Token    string
	UserID   string
	DeviceID string
}

// New returns an anonymous client of base.
func New(base string, hc *http.Client) *Client {
	if hc == nil {
		hc = NewHTTPClient()
	}
	return &Client{Base: strings.TrimRight(base, "/"), HTTP: hc}
}

// Do sends a JSON request to path (under /_matrix/client/v3 unless it
// starts with /_matrix) and decodes a 2xx answer into out (may be nil).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	if !strings.HasPrefix(path, "/_matrix") {
		path = "/_matrix/client/v3" + path
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		var m struct {
			Errcode      string `json:"errcode"`
			Error        string `json:"error"`
			RetryAfterMS int64  `json:"retry_after_ms"`
		}
		if json.Unmarshal(data, &m) == nil && m.Errcode != "" {
			e.Errcode, e.Message, e.RetryAfterMS = m.Errcode, m.Error, m.RetryAfterMS
		} else {
			e.Errcode, e.Message = "HTTP_"+strconv.Itoa(resp.StatusCode), strings.TrimSpace(string(data))
		}
		// A UIA challenge carries its session in the 401 body.
		if resp.StatusCode == http.StatusUnauthorized && out != nil {
			_ = json.Unmarshal(data, out)
		}
		return e
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

type loginAnswer struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token"`
	DeviceID    string `json:"device_id"`
	Session     string `json:"session"`
}

// Register creates the account with the m.login.dummy stage and acts as
// it. An empty password registers an account without one.
func (c *Client) Register(ctx context.Context, username, password string) error {
	body := map[string]any{"username": username, "auth": map[string]any{"type": "m.login.dummy"}}
	if password != "" {
		body["password"] = password
	}
	var a loginAnswer
	err := c.Do(ctx, "POST", "/register", body, &a)
	var me *Error
	if errors.As(err, &me) && me.Status == http.StatusUnauthorized && a.Session != "" {
		// Servers that want the session echoed: answer the challenge.
		body["auth"] = map[string]any{"type": "m.login.dummy", "session": a.Session}
		a = loginAnswer{}
		err = c.Do(ctx, "POST", "/register", body, &a)
	}
	if err != nil {
		return err
	}
	c.UserID, c.Token, c.DeviceID = a.UserID, a.AccessToken, a.DeviceID
	return nil
}

// Login logs in with a password and acts as the user.
func (c *Client) Login(ctx context.Context, user, password string) error {
	var a loginAnswer
	err := c.Do(ctx, "POST", "/login", map[string]any{
		"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": user}, "password": password,
	}, &a)
	if err != nil {
		return err
	}
	c.UserID, c.Token, c.DeviceID = a.UserID, a.AccessToken, a.DeviceID
	return nil
}

// CreateRoom creates a room from a createRoom request body.
func (c *Client) CreateRoom(ctx context.Context, req map[string]any) (string, error) {
	var a struct {
		RoomID string `json:"room_id"`
	}
	err := c.Do(ctx, "POST", "/createRoom", req, &a)
	return a.RoomID, err
}

// Join joins a room by ID or alias.
func (c *Client) Join(ctx context.Context, roomIDOrAlias string) error {
	return c.Do(ctx, "POST", "/join/"+url.PathEscape(roomIDOrAlias), map[string]any{}, nil)
}

// Membership posts invite, kick, ban, unban or leave (target "" for leave).
func (c *Client) Membership(ctx context.Context, roomID, action, target string) error {
	body := map[string]any{}
	if target != "" {
		body["user_id"] = target
	}
	return c.Do(ctx, "POST", "/rooms/"+url.PathEscape(roomID)+"/"+action, body, nil)
}

// Send sends a message event and returns its ID.
func (c *Client) Send(ctx context.Context, roomID, evType, txnID string, content any) (string, error) {
	var a struct {
		EventID string `json:"event_id"`
	}
	err := c.Do(ctx, "PUT", "/rooms/"+url.PathEscape(roomID)+"/send/"+url.PathEscape(evType)+"/"+url.PathEscape(txnID), content, &a)
	return a.EventID, err
}

// SetState sends a state event and returns its ID.
func (c *Client) SetState(ctx context.Context, roomID, evType, stateKey string, content any) (string, error) {
	var a struct {
		EventID string `json:"event_id"`
	}
	err := c.Do(ctx, "PUT", "/rooms/"+url.PathEscape(roomID)+"/state/"+url.PathEscape(evType)+"/"+url.PathEscape(stateKey), content, &a)
	return a.EventID, err
}

// Redact redacts an event.
func (c *Client) Redact(ctx context.Context, roomID, eventID, txnID string) (string, error) {
	var a struct {
		EventID string `json:"event_id"`
	}
	err := c.Do(ctx, "PUT", "/rooms/"+url.PathEscape(roomID)+"/redact/"+url.PathEscape(eventID)+"/"+url.PathEscape(txnID), map[string]any{}, &a)
	return a.EventID, err
}

// Typing sets the user's typing state in a room.
func (c *Client) Typing(ctx context.Context, roomID string, typing bool, timeoutMS int64) error {
	body := map[string]any{"typing": typing}
	if typing {
		body["timeout"] = timeoutMS
	}
	return c.Do(ctx, "PUT", "/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(c.UserID), body, nil)
}

// Receipt sends a receipt.
func (c *Client) Receipt(ctx context.Context, roomID, receiptType, eventID string) error {
	return c.Do(ctx, "POST", "/rooms/"+url.PathEscape(roomID)+"/receipt/"+url.PathEscape(receiptType)+"/"+url.PathEscape(eventID), map[string]any{}, nil)
}

// SetDisplayName changes the user's display name.
func (c *Client) SetDisplayName(ctx context.Context, name string) error {
	return c.Do(ctx, "PUT", "/profile/"+url.PathEscape(c.UserID)+"/displayname", map[string]any{"displayname": name}, nil)
}

// SetPresence sets the user's presence.
func (c *Client) SetPresence(ctx context.Context, presence string) error {
	return c.Do(ctx, "PUT", "/presence/"+url.PathEscape(c.UserID)+"/status", map[string]any{"presence": presence}, nil)
}

// SyncEvent is a timeline event as /sync returns it.
type SyncEvent struct {
	EventID string          `json:"event_id"`
	Type    string          `json:"type"`
	Sender  string          `json:"sender"`
	Content json.RawMessage `json:"content"`
}

// SyncResponse is the part of a /sync answer the tools read.
type SyncResponse struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			Timeline struct {
				Events []SyncEvent `json:"events"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

// Sync long-polls /sync.
func (c *Client) Sync(ctx context.Context, since string, timeout time.Duration, filter string) (*SyncResponse, error) {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	q.Set("timeout", strconv.FormatInt(timeout.Milliseconds(), 10))
	if filter != "" {
		q.Set("filter", filter)
	}
	var a SyncResponse
	if err := c.Do(ctx, "GET", "/sync?"+q.Encode(), nil, &a); err != nil {
		return nil, err
	}
	return &a, nil
}
