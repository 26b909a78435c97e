package stepline

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the ErrorInfo domain of the errors a Stepline server sends.
const Domain = "stepline.dev"

// FieldViolation is one bad request field; Field is a JSON path such as "input_data.name".
type FieldViolation struct {
	Field       string
	Description string
}

// PreconditionViolation says why the run's state refused the call.
type PreconditionViolation struct {
	Type        string // e.g. "RUN_NOT_SUSPENDED"
	Subject     string // e.g. "run/<run id>"
	Description string
}

// Error is a failed call, decoded once from its google.rpc.Status details.
//
// Code is the gRPC status code and Reason the server's ErrorInfo reason (e.g.
// "RUN_NOT_FOUND"; empty when the server sent none). Metadata is the ErrorInfo metadata
// (e.g. "run_id"); FieldViolations come from BadRequest (INVALID_ARGUMENT) and
// PreconditionViolations from PreconditionFailure (FAILED_PRECONDITION).
type Error struct {
	Code                   codes.Code
	Message                string
	Reason                 string
	Metadata               map[string]string
	FieldViolations        []FieldViolation
	PreconditionViolations []PreconditionViolation
	status                 *status.Status
}

func (e *Error) Error() string {
	label := e.Reason
	if label == "" {
		label = e.Code.String()
	}
	return fmt.Sprintf("%s: %s", label, e.Message)
}

// GRPCStatus makes status.Code and status.FromError work on an *Error.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Details returns every status detail, decoded when its type is known (errdetails types).
func (e *Error) Details() []any { return e.status.Details() }

// fromGRPC turns a failed call's error into an *Error; nil stays nil.
func fromGRPC(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err // not an RPC failure (e.g. the caller's context ended between calls)
	}
	out := &Error{Code: st.Code(), Message: st.Message(), Metadata: map[string]string{}, status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == Domain {
				out.Reason = d.GetReason()
				for k, v := range d.GetMetadata() {
					out.Metadata[k] = v
				}
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out.FieldViolations = append(out.FieldViolations,
					FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		case *errdetails.PreconditionFailure:
			for _, v := range d.GetViolations() {
				out.PreconditionViolations = append(out.PreconditionViolations,
					PreconditionViolation{Type: v.GetType(), Subject: v.GetSubject(), Description: v.GetDescription()})
			}
		}
	}
	return out
}
