package stepline

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/stepline/stepline/client/go/stepline/v1"
)

// Results with many steps can exceed gRPC's 4 MiB default message size.
const maxMessageBytes = 64 << 20

// Client is a connection to a Stepline server. It is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	raw  pb.WorkflowServiceClient
}

// Dial prepares a connection to target ("host:port"). The connection itself is made
// lazily by the first call and re-made after the server restarts.
func Dial(target string, opts ...DialOption) (*Client, error) {
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	creds := insecure.NewCredentials()
	if o.tls != nil {
		creds = o.tls
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// Keepalive finds dead connections under long waits and idle watches.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)),
	}
	if o.token != "" {
		dial = append(dial,
			grpc.WithChainUnaryInterceptor(bearerUnary(o.token)),
			grpc.WithChainStreamInterceptor(bearerStream(o.token)))
	}
	conn, err := grpc.NewClient(target, append(dial, o.grpc...)...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, raw: pb.NewWorkflowServiceClient(conn)}, nil
}

// Close closes the connection; calls in flight end (the runs carry on).
func (c *Client) Close() error { return c.conn.Close() }

// Raw is the generated stub, for the RPCs and fields this package does not wrap.
func (c *Client) Raw() pb.WorkflowServiceClient { return c.raw }

func bearerUnary(token string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token),
			method, req, reply, cc, opts...)
	}
}

func bearerStream(token string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token),
			desc, cc, method, opts...)
	}
}

// Start starts a run of workflowID with input (anything encoding/json can marshal) and
// waits until it settles: success, failed, canceled or suspended. A context deadline bounds
// the call, not the run.
func (c *Client) Start(ctx context.Context, workflowID string, input any, opts ...Option) (*pb.RunResult, error) {
	o := collect(opts)
	req := &pb.StartRequest{
		WorkflowId:    workflowID,
		RunId:         o.runID,
		ResourceId:    o.resourceID,
		RequestId:     o.startRequestID(),
		OutputOptions: &pb.OutputOptions{IncludeState: o.includeState},
		PerStep:       o.perStep,
	}
	if err := o.fill(input, &req.InputData, &req.InitialState, &req.RequestContext, &req.TracingOptions); err != nil {
		return nil, err
	}
	res, err := c.raw.Start(ctx, req)
	if err != nil {
		return nil, fromGRPC(err)
	}
	return res.GetResult(), nil
}

// StartAsync starts a run and returns as soon as it is recorded durably.
func (c *Client) StartAsync(ctx context.Context, workflowID string, input any, opts ...Option) (*pb.StartAsyncResponse, error) {
	o := collect(opts)
	req := &pb.StartAsyncRequest{
		WorkflowId:    workflowID,
		RunId:         o.runID,
		ResourceId:    o.resourceID,
		RequestId:     o.startRequestID(),
		OutputOptions: &pb.OutputOptions{IncludeState: o.includeState},
		PerStep:       o.perStep,
	}
	if err := o.fill(input, &req.InputData, &req.InitialState, &req.RequestContext, &req.TracingOptions); err != nil {
		return nil, err
	}
	res, err := c.raw.StartAsync(ctx, req)
	return res, fromGRPC(err)
}

// fill encodes the JSON parts every start request has.
func (o callOptions) fill(
	input any, data **structpb.Value, state, rctx **structpb.Struct, tracing **pb.TracingOptions,
) error {
	var err error
	if *data, err = toValue(input); err != nil {
		return err
	}
	if *state, err = toStruct(o.initialState); err != nil {
		return err
	}
	if *rctx, err = toStruct(o.requestContext); err != nil {
		return err
	}
	t := &pb.TracingOptions{TraceId: o.traceID}
	if t.Metadata, err = toStruct(o.traceMetadata); err != nil {
		return err
	}
	*tracing = t
	return nil
}

// Resume resumes a suspended run with data and waits until it settles again. Name the
// step with WithStep or WithLabel unless exactly one step is suspended.
func (c *Client) Resume(ctx context.Context, runID string, data any, opts ...Option) (*pb.RunResult, error) {
	o := collect(opts)
	req := &pb.ResumeRequest{
		RunId:         runID,
		Step:          o.step,
		Label:         o.label,
		ForEachIndex:  o.forEachIndex,
		OutputOptions: &pb.OutputOptions{IncludeState: o.includeState},
		PerStep:       o.perStep,
	}
	var err error
	if req.ResumeData, err = toValue(data); err != nil {
		return nil, err
	}
	if req.RequestContext, err = toStruct(o.requestContext); err != nil {
		return nil, err
	}
	res, err := c.raw.Resume(ctx, req)
	if err != nil {
		return nil, fromGRPC(err)
	}
	return res.GetResult(), nil
}

// ResumeAsync resumes a suspended run and returns at once; Watch with
// AfterSequence(res.GetAfterSequence()) to follow the continuation.
func (c *Client) ResumeAsync(ctx context.Context, runID string, data any, opts ...Option) (*pb.ResumeAsyncResponse, error) {
	o := collect(opts)
	req := &pb.ResumeAsyncRequest{
		RunId: runID, Step: o.step, Label: o.label, ForEachIndex: o.forEachIndex,
		OutputOptions: &pb.OutputOptions{IncludeState: o.includeState}, PerStep: o.perStep,
	}
	var err error
	if req.ResumeData, err = toValue(data); err != nil {
		return nil, err
	}
	if req.RequestContext, err = toStruct(o.requestContext); err != nil {
		return nil, err
	}
	res, err := c.raw.ResumeAsync(ctx, req)
	return res, fromGRPC(err)
}

// Cancel asks the run to stop. Idempotent; a finished run is left as it is.
func (c *Client) Cancel(ctx context.Context, runID string) (*pb.CancelResponse, error) {
	res, err := c.raw.Cancel(ctx, &pb.CancelRequest{RunId: runID})
	return res, fromGRPC(err)
}

// GetResult returns the run's current result; with WaitUpTo it first waits (bounded) for
// the run to settle. A run still going is a normal answer, not an error.
func (c *Client) GetResult(ctx context.Context, runID string, opts ...Option) (*pb.RunResult, error) {
	o := collect(opts)
	req := &pb.GetExecutionResultRequest{RunId: runID, IncludeState: o.includeState}
	if o.wait > 0 {
		req.WaitTimeout = durationpb.New(o.wait)
	}
	res, err := c.raw.GetExecutionResult(ctx, req)
	if err != nil {
		return nil, fromGRPC(err)
	}
	return res.GetResult(), nil
}
