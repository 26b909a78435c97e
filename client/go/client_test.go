package stepline

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/stepline/stepline/client/go/stepline/v1"
)

func TestFromGRPCDecodesDetails(t *testing.T) {
	st, err := status.New(codes.InvalidArgument, "invalid start request").WithDetails(
		&errdetails.ErrorInfo{Reason: "INVALID_ARGUMENT", Domain: Domain, Metadata: map[string]string{"workflow_id": "greet"}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "input_data.name", Description: "Field required"},
		}},
	)
	if err != nil {
		t.Fatal(err)
	}
	wrapped := fmt.Errorf("call: %w", fromGRPC(st.Err()))

	var got *Error
	if !errors.As(wrapped, &got) {
		t.Fatalf("errors.As found no *Error in %v", wrapped)
	}
	if got.Code != codes.InvalidArgument || got.Reason != "INVALID_ARGUMENT" || got.Metadata["workflow_id"] != "greet" {
		t.Errorf("decoded %+v", got)
	}
	if len(got.FieldViolations) != 1 || got.FieldViolations[0].Field != "input_data.name" {
		t.Errorf("field violations %+v", got.FieldViolations)
	}
	if status.Code(wrapped) != codes.InvalidArgument {
		t.Errorf("status.Code = %v", status.Code(wrapped))
	}
	if got.Error() != "INVALID_ARGUMENT: invalid start request" {
		t.Errorf("Error() = %q", got.Error())
	}
}

func TestFromGRPCIgnoresOtherDomains(t *testing.T) {
	st, _ := status.New(codes.FailedPrecondition, "no").WithDetails(
		&errdetails.ErrorInfo{Reason: "ELSEWHERE", Domain: "example.org"},
		&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{
			{Type: "RUN_NOT_SUSPENDED", Subject: "run/r1"},
		}},
	)
	var got *Error
	if !errors.As(fromGRPC(st.Err()), &got) {
		t.Fatal("not an *Error")
	}
	if got.Reason != "" || len(got.PreconditionViolations) != 1 || got.PreconditionViolations[0].Subject != "run/r1" {
		t.Errorf("decoded %+v", got)
	}
	if got.Error() != "FailedPrecondition: no" {
		t.Errorf("Error() = %q", got.Error())
	}
}

func TestFromGRPCPassesOtherErrorsThrough(t *testing.T) {
	plain := errors.New("boom")
	if fromGRPC(plain) != plain || fromGRPC(nil) != nil {
		t.Error("a non-RPC error must pass through unchanged")
	}
}

func TestReconnectDelayIsBoundedAndGrows(t *testing.T) {
	for attempt := 1; attempt <= 10; attempt++ {
		d := reconnectDelay(attempt)
		ceiling := min(reconnectMaxDelay, reconnectBaseDelay<<(attempt-1))
		if d < ceiling/2 || d > ceiling {
			t.Errorf("attempt %d: delay %v outside [%v, %v]", attempt, d, ceiling/2, ceiling)
		}
	}
	if reconnectDelay(10) > 2*time.Second {
		t.Error("delay not capped")
	}
}

func TestEventTypeAndStepID(t *testing.T) {
	ev := &pb.RunEvent{Payload: &pb.RunEvent_StepResult{StepResult: &pb.StepResultEvent{StepId: "shout"}}}
	if EventType(ev) != "step-result" || StepID(ev) != "shout" {
		t.Errorf("got %q %q", EventType(ev), StepID(ev))
	}
	finish := &pb.RunEvent{Payload: &pb.RunEvent_WorkflowFinish{WorkflowFinish: &pb.WorkflowFinishEvent{}}}
	if EventType(finish) != "workflow-finish" || StepID(finish) != "" {
		t.Errorf("got %q %q", EventType(finish), StepID(finish))
	}
}

func TestJSONRoundTrip(t *testing.T) {
	type order struct {
		Item   string  `json:"item"`
		Amount float64 `json:"amount"`
	}
	value, err := toValue(order{Item: "laptop", Amount: 1200})
	if err != nil {
		t.Fatal(err)
	}
	if value.GetStructValue().GetFields()["item"].GetStringValue() != "laptop" {
		t.Errorf("encoded %v", value)
	}
	var back order
	if err := Decode(value, &back); err != nil || back != (order{"laptop", 1200}) {
		t.Errorf("decoded %+v, %v", back, err)
	}
	if s, err := toStruct(nil); s != nil || err != nil {
		t.Error("nil map must leave the field unset")
	}
	if _, err := toValue(make(chan int)); err == nil {
		t.Error("a channel is not JSON")
	}
	same := structpb.NewStringValue("x")
	if v, _ := toValue(same); v != same {
		t.Error("a *structpb.Value passes through")
	}
}
