package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// adminCmd is `engram admin`: the common admin tasks on a running server,
// through its Synapse-compatible admin API, so that nobody needs SQL or
// curl. It logs in as an admin (the password from a prompt or standard
// input) unless given an access token, and logs out when done.
func adminCmd(args []string) int {
	cf := newConfigFlags("admin", false)
	fs := cf.fs
	urlFlag := fs.String("url", "", "server URL (default: http://<listen>)")
	as := fs.String("as", "", "the admin to act as (localpart or user ID); its password is prompted for or read from standard input")
	token := fs.String("token", "", "an admin's access token, instead of --as")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: engram admin [--config FILE] (--as ADMIN | --token TOKEN) COMMAND [ARGS]

Commands:
  list-users [--deactivated]     the server's users
  list-rooms                     the server's rooms
  make-admin USER                make USER a server admin
  revoke-admin USER              make USER an ordinary user
  reset-password USER [--keep-devices]
                                 set USER's password (prompted for, or the first
                                 line of standard input; the next line when --as
                                 also reads a password there)
  deactivate USER [--erase]      deactivate USER's account for good

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	l, err := cf.load(false)
	if err != nil {
		return fail(2, "%v", err)
	}
	a := &adminClient{http: &http.Client{Timeout: 60 * time.Second}, base: serverURL(l.cfg, *urlFlag), serverName: l.cfg.ServerName, token: *token}
	sub, subArgs := rest[0], rest[1:]
	sfs := flag.NewFlagSet("engram admin "+sub, flag.ContinueOnError)
	deactivated := sfs.Bool("deactivated", false, "list-users: include deactivated users")
	keep := sfs.Bool("keep-devices", false, "reset-password: keep the user's sessions")
	erase := sfs.Bool("erase", false, "deactivate: also erase the profile (GDPR erasure)")
	if code, ok := parseFlags(sfs, subArgs); !ok {
		return code
	}
	target := ""
	switch sub {
	case "list-users", "list-rooms":
	case "make-admin", "revoke-admin", "reset-password", "deactivate":
		if sfs.NArg() != 1 {
			return fail(2, "engram admin %s needs one USER (a localpart or a user ID)", sub)
		}
		target = a.userID(sfs.Arg(0))
	default:
		return fail(2, "engram admin: unknown command %q (run engram admin -h)", sub)
	}
	stdin := newLineReader()
	if a.token == "" {
		if *as == "" {
			return fail(2, "engram admin needs --as ADMIN (you are asked for the password) or --token TOKEN")
		}
		pw, err := stdin.password("Password for " + *as)
		if err != nil {
			return fail(2, "%v", err)
		}
		if err := a.login(*as, pw); err != nil {
			return fail(1, "logging in as %s at %s: %v", *as, a.base, err)
		}
		defer a.logout()
	}
	if err := a.run(sub, target, *deactivated, *keep, *erase, stdin); err != nil {
		return fail(1, "%v", err)
	}
	return 0
}

// serverURL is the client API's URL: the flag, or the configured listener.
func serverURL(cfg Config, flagURL string) string {
	if flagURL != "" {
		return strings.TrimRight(flagURL, "/")
	}
	host, port, _ := net.SplitHostPort(cfg.Listen)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

type adminClient struct {
	http       *http.Client
	base       string
	serverName string
	token      string
}

func (a *adminClient) userID(name string) string {
	if strings.HasPrefix(name, "@") {
		return name
	}
	return "@" + strings.ToLower(name) + ":" + a.serverName
}

func (a *adminClient) call(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s (is the server running?): %w", method, a.base+path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Errcode, Error string }
		if json.Unmarshal(data, &e) == nil && e.Errcode != "" {
			return fmt.Errorf("the server refused: %s (%s)", e.Error, e.Errcode)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

func (a *adminClient) login(user, pw string) error {
	var out struct {
		AccessToken string `json:"access_token"`
	}
	err := a.call("POST", "/_matrix/client/v3/login", map[string]any{"type": "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": a.userID(user)}, "password": pw,
		"initial_device_display_name": "engram admin"}, &out)
	a.token = out.AccessToken
	return err
}

func (a *adminClient) logout() {
	_ = a.call("POST", "/_matrix/client/v3/logout", map[string]any{}, nil)
}

func (a *adminClient) run(sub, target string, deactivated, keep, erase bool, stdin *lineReader) error {
	u := url.PathEscape(target)
	switch sub {
	case "list-users":
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "USER\tDISPLAY NAME\tADMIN\tDEACTIVATED\tLOCKED\tSHADOW-BANNED")
		for from := ""; ; {
			var page struct {
				Users []struct {
					Name         string  `json:"name"`
					DisplayName  *string `json:"displayname"`
					Admin        bool    `json:"admin"`
					Deactivated  bool    `json:"deactivated"`
					Locked       bool    `json:"locked"`
					ShadowBanned bool    `json:"shadow_banned"`
				} `json:"users"`
				NextToken string `json:"next_token"`
			}
			q := url.Values{"limit": {"500"}, "from": {from}, "deactivated": {fmt.Sprint(deactivated)}, "locked": {"true"}}
			if err := a.call("GET", "/_synapse/admin/v2/users?"+q.Encode(), nil, &page); err != nil {
				return err
			}
			for _, x := range page.Users {
				dn := ""
				if x.DisplayName != nil {
					dn = *x.DisplayName
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", x.Name, dn, yes(x.Admin), yes(x.Deactivated), yes(x.Locked), yes(x.ShadowBanned))
			}
			if from = page.NextToken; from == "" {
				break
			}
		}
		return w.Flush()
	case "list-rooms":
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ROOM\tNAME\tALIAS\tMEMBERS\tLOCAL\tVERSION\tPUBLIC")
		for from := 0; ; {
			var page struct {
				Rooms []struct {
					RoomID  string  `json:"room_id"`
					Name    *string `json:"name"`
					Alias   *string `json:"canonical_alias"`
					Joined  int     `json:"joined_members"`
					Local   int     `json:"joined_local_members"`
					Version string  `json:"version"`
					Public  bool    `json:"public"`
				} `json:"rooms"`
				NextBatch *int `json:"next_batch"`
			}
			if err := a.call("GET", fmt.Sprintf("/_synapse/admin/v1/rooms?limit=500&from=%d", from), nil, &page); err != nil {
				return err
			}
			for _, x := range page.Rooms {
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", x.RoomID, deref(x.Name), deref(x.Alias), x.Joined, x.Local, x.Version, yes(x.Public))
			}
			if page.NextBatch == nil {
				break
			}
			from = *page.NextBatch
		}
		return w.Flush()
	case "make-admin", "revoke-admin":
		if err := a.call("PUT", "/_synapse/admin/v1/users/"+u+"/admin", map[string]bool{"admin": sub == "make-admin"}, nil); err != nil {
			return err
		}
		if sub == "make-admin" {
			fmt.Printf("%s is a server admin\n", target)
		} else {
			fmt.Printf("%s is no longer a server admin\n", target)
		}
	case "reset-password":
		pw, err := stdin.password("New password for " + target)
		if err != nil {
			return err
		}
		if pw == "" {
			return fmt.Errorf("the new password is empty")
		}
		if err := a.call("POST", "/_synapse/admin/v1/reset_password/"+u, map[string]any{"new_password": pw, "logout_devices": !keep}, nil); err != nil {
			return err
		}
		fmt.Printf("reset the password of %s\n", target)
	case "deactivate":
		if err := a.call("POST", "/_synapse/admin/v1/deactivate/"+u, map[string]any{"erase": erase}, nil); err != nil {
			return err
		}
		fmt.Printf("deactivated %s\n", target)
	}
	return nil
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "-"
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
