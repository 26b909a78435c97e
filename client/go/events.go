package stepline

import (
	"context"
	"errors"
	"io"
	"iter"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stepline/stepline/client/go/stepline/v1"
)

// Reconnects: bounded, jittered exponential backoff, reset by every delivered event.
const (
	reconnectAttempts  = 5
	reconnectBaseDelay = 100 * time.Millisecond
	reconnectMaxDelay  = 2 * time.Second
)

func reconnectDelay(attempt int) time.Duration {
	delay := min(reconnectMaxDelay, reconnectBaseDelay<<(attempt-1))
	return time.Duration(float64(delay) * (0.5 + rand.Float64()/2))
}

// EventType names an event's payload as Mastra does: "workflow-start", "step-start",
// "step-output", "step-progress", "step-result", "step-suspended", "step-waiting",
// "workflow-canceled", "workflow-paused", "workflow-finish"; "" for a payload this client
// does not know.
func EventType(ev *pb.RunEvent) string {
	switch ev.GetPayload().(type) {
	case *pb.RunEvent_WorkflowStart:
		return "workflow-start"
	case *pb.RunEvent_StepStart:
		return "step-start"
	case *pb.RunEvent_StepOutput:
		return "step-output"
	case *pb.RunEvent_StepProgress:
		return "step-progress"
	case *pb.RunEvent_StepResult:
		return "step-result"
	case *pb.RunEvent_StepSuspended:
		return "step-suspended"
	case *pb.RunEvent_StepWaiting:
		return "step-waiting"
	case *pb.RunEvent_WorkflowCanceled:
		return "workflow-canceled"
	case *pb.RunEvent_WorkflowPaused:
		return "workflow-paused"
	case *pb.RunEvent_WorkflowFinish:
		return "workflow-finish"
	}
	return ""
}

// StepID is the step an event is about, or "" for workflow-level events.
func StepID(ev *pb.RunEvent) string {
	switch p := ev.GetPayload().(type) {
	case *pb.RunEvent_StepStart:
		return p.StepStart.GetStepId()
	case *pb.RunEvent_StepOutput:
		return p.StepOutput.GetStepId()
	case *pb.RunEvent_StepProgress:
		return p.StepProgress.GetStepId()
	case *pb.RunEvent_StepResult:
		return p.StepResult.GetStepId()
	case *pb.RunEvent_StepSuspended:
		return p.StepSuspended.GetStepId()
	case *pb.RunEvent_StepWaiting:
		return p.StepWaiting.GetStepId()
	}
	return ""
}

// Watch yields the run's events after AfterSequence (0 replays from the start), then
// follows it live until it settles (or, with KeepOpenOnSuspend, until it finishes).
//
// When the connection drops (UNAVAILABLE) the watch resumes from the last delivered event
// after a short backoff, a bounded number of times, so the caller sees no gap and no
// repeat; WithoutReconnect turns that off. An error ends the iteration as its last pair.
func (c *Client) Watch(ctx context.Context, runID string, opts ...Option) iter.Seq2[*pb.RunEvent, error] {
	o := collect(opts)
	open := func(ctx context.Context) (recvFunc, error) {
		return c.openWatch(ctx, runID, o.afterSequence, o.keepOpenOnSuspend)
	}
	return c.follow(ctx, runID, o, open, nil)
}

// Stream starts a run and yields its events until it settles (or, with
// KeepOpenOnSuspend, until it finishes). A dropped connection is picked up with a Watch
// from the last event seen, as in Watch; before the first event the same start is sent
// again, which its request id (see WithRequestID) makes answer the same run.
func (c *Client) Stream(ctx context.Context, workflowID string, input any, opts ...Option) iter.Seq2[*pb.RunEvent, error] {
	o := collect(opts)
	// Built once, so that sending it again carries the same request id.
	req := &pb.StreamRequest{
		WorkflowId:        workflowID,
		RunId:             o.runID,
		ResourceId:        o.resourceID,
		RequestId:         o.startRequestID(),
		KeepOpenOnSuspend: o.keepOpenOnSuspend,
		OutputOptions:     &pb.OutputOptions{IncludeState: o.includeState},
		PerStep:           o.perStep,
	}
	invalid := o.fill(input, &req.InputData, &req.InitialState, &req.RequestContext, &req.TracingOptions)
	open := func(ctx context.Context) (recvFunc, error) {
		if invalid != nil {
			return nil, invalid
		}
		stream, err := c.raw.Stream(ctx, req)
		return receiver(stream, err)
	}
	o.afterSequence = 0
	return c.follow(ctx, "", o, open, open)
}

// ResumeStream resumes a suspended run and yields the continuation's events until it
// settles, reconnecting like Stream.
func (c *Client) ResumeStream(ctx context.Context, runID string, data any, opts ...Option) iter.Seq2[*pb.RunEvent, error] {
	o := collect(opts)
	open := func(ctx context.Context) (recvFunc, error) {
		req := &pb.ResumeStreamRequest{
			RunId:             runID,
			Step:              o.step,
			Label:             o.label,
			ForEachIndex:      o.forEachIndex,
			KeepOpenOnSuspend: o.keepOpenOnSuspend,
			OutputOptions:     &pb.OutputOptions{IncludeState: o.includeState},
			PerStep:           o.perStep,
		}
		var err error
		if req.ResumeData, err = toValue(data); err != nil {
			return nil, err
		}
		if req.RequestContext, err = toStruct(o.requestContext); err != nil {
			return nil, err
		}
		stream, err := c.raw.ResumeStream(ctx, req)
		return receiver(stream, err)
	}
	o.afterSequence = 0
	// Until the first event arrives it is unknown whether the resume was applied, so there
	// is nothing safe to watch or to send again: the run id is learnt from that event.
	return c.follow(ctx, "", o, open, nil)
}

type recvFunc func() (*pb.RunEvent, error)

// eventResponse is a pointer to one of the streamed responses, all of which carry an event.
type eventResponse[T any] interface {
	*T
	GetEvent() *pb.RunEvent
}

func receiver[T any, P eventResponse[T]](stream grpc.ServerStreamingClient[T], err error) (recvFunc, error) {
	if err != nil {
		return nil, err
	}
	return func() (*pb.RunEvent, error) {
		res, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		return P(res).GetEvent(), nil
	}, nil
}

func (c *Client) openWatch(ctx context.Context, runID string, after int64, keepOpen bool) (recvFunc, error) {
	req := &pb.WatchRequest{RunId: runID, AfterSequence: after, KeepOpenOnSuspend: keepOpen}
	stream, err := c.raw.Watch(ctx, req)
	return receiver(stream, err)
}

// follow yields events from the call open starts; on UNAVAILABLE it carries on with a
// Watch from the last delivered sequence. runID is "" while the run is not known to exist
// (a stream before its first event): then the call is sent again with resend (a start,
// which its request id makes safe to repeat), or, when resend is nil, the error is
// returned instead.
func (c *Client) follow(
	ctx context.Context, runID string, o callOptions,
	open, resend func(context.Context) (recvFunc, error),
) iter.Seq2[*pb.RunEvent, error] {
	return func(yield func(*pb.RunEvent, error) bool) {
		cursor := o.afterSequence
		attempt := 0
		// One context for every call this iteration opens: a call that failed is already
		// released by gRPC, and returning early (the consumer stopped) ends the open one.
		callCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		recv, err := open(callCtx)
		for {
			for err == nil {
				var ev *pb.RunEvent
				if ev, err = recv(); err != nil {
					break
				}
				if ev.GetSequence() <= cursor {
					continue // already delivered before a reconnect
				}
				cursor, runID, attempt = ev.GetSequence(), ev.GetRunId(), 0
				if !yield(ev, nil) {
					return
				}
			}
			if errors.Is(err, io.EOF) {
				return
			}
			if o.noReconnect || (runID == "" && resend == nil) || status.Code(err) != codes.Unavailable ||
				attempt >= reconnectAttempts || ctx.Err() != nil {
				yield(nil, fromGRPC(err))
				return
			}
			attempt++
			select {
			case <-time.After(reconnectDelay(attempt)):
			case <-ctx.Done():
				yield(nil, ctx.Err())
				return
			}
			if runID == "" {
				recv, err = resend(callCtx)
			} else {
				recv, err = c.openWatch(callCtx, runID, cursor, o.keepOpenOnSuspend)
			}
		}
	}
}
