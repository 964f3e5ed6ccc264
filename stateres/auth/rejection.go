package auth

import "fmt"

// Rejection is the error returned when an event fails an authorisation rule.
// Clause is a stable name for the rule (for example "member.join.banned"),
// the same in every room version; Rule is the rule's number in the text of
// the event's room version (for example "5.2.3" in v1, "4.3.3" in v8), or ""
// for checks the spec states outside its numbered list.
type Rejection struct {
	Clause string
	Rule   string
	Reason string
}

func (r *Rejection) Error() string {
	if r.Rule != "" {
		return fmt.Sprintf("event not authorised: rule %s (%s): %s", r.Rule, r.Clause, r.Reason)
	}
	return fmt.Sprintf("event not authorised: %s: %s", r.Clause, r.Reason)
}

// SoftFailure is returned by CheckSoftFail when an event that its own auth
// events authorise is not authorised by the current state of the room. It
// wraps the Rejection that the current state produced, so errors.As finds
// both.
type SoftFailure struct {
	Rejection *Rejection
}

func (s *SoftFailure) Error() string {
	return "event soft-failed against the current room state: " + s.Rejection.Error()
}

func (s *SoftFailure) Unwrap() error { return s.Rejection }
