package transport

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errorDomain names stevedore's own reasons in a status's ErrorInfo.
const errorDomain = "stevedore"

// reasonNotAccepting marks an agent's refusal of a new step for what it
// is now (draining, shutting down, low on disk), not for what the step
// is: the server gives the step to another worker instead of failing it.
const reasonNotAccepting = "NOT_ACCEPTING"

// NotAccepting is the error an agent returns for a new step it takes no
// new steps for now, with code (Unavailable, ResourceExhausted) and why.
func NotAccepting(code codes.Code, why string) error {
	st, err := status.New(code, why).WithDetails(&errdetails.ErrorInfo{Reason: reasonNotAccepting, Domain: errorDomain})
	if err != nil {
		return status.Error(code, why) // cannot happen: ErrorInfo always marshals
	}
	return st.Err()
}

// IsNotAccepting reports whether err is an agent's NotAccepting refusal.
func IsNotAccepting(err error) bool {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain && info.GetReason() == reasonNotAccepting {
			return true
		}
	}
	return false
}
