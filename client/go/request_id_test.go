package stepline

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stepline/stepline/client/go/stepline/v1"
)

// startRecorder is a WorkflowService that records the request id of every start; its first
// Stream fails with UNAVAILABLE before sending anything, the next ones finish at once.
type startRecorder struct {
	pb.UnimplementedWorkflowServiceServer
	mu      sync.Mutex
	ids     []string
	streams int
}

func (s *startRecorder) record(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids = append(s.ids, id)
	return len(s.ids)
}

func (s *startRecorder) StartAsync(_ context.Context, req *pb.StartAsyncRequest) (*pb.StartAsyncResponse, error) {
	s.record(req.GetRequestId())
	return &pb.StartAsyncResponse{RunId: "r1", Created: true}, nil
}

func (s *startRecorder) Start(_ context.Context, req *pb.StartRequest) (*pb.StartResponse, error) {
	s.record(req.GetRequestId())
	return &pb.StartResponse{Result: &pb.RunResult{RunId: "r1"}}, nil
}

func (s *startRecorder) Stream(req *pb.StreamRequest, stream grpc.ServerStreamingServer[pb.StreamResponse]) error {
	s.record(req.GetRequestId())
	s.mu.Lock()
	s.streams++
	first := s.streams == 1
	s.mu.Unlock()
	if first {
		return status.Error(codes.Unavailable, "this replica is shutting down")
	}
	finish := &pb.RunEvent{RunId: "r1", Sequence: 1,
		Payload: &pb.RunEvent_WorkflowFinish{WorkflowFinish: &pb.WorkflowFinishEvent{}}}
	return stream.Send(&pb.StreamResponse{Event: finish})
}

func serveRecorder(t *testing.T) (*Client, *startRecorder) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recorder := &startRecorder{}
	server := grpc.NewServer()
	pb.RegisterWorkflowServiceServer(server, recorder)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	client, err := Dial(listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client, recorder
}

func TestEveryStartCarriesARequestIDOfItsOwn(t *testing.T) {
	client, recorder := serveRecorder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		if _, err := client.StartAsync(ctx, "wf", map[string]int{"n": 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Start(ctx, "wf", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.StartAsync(ctx, "wf", nil, WithRequestID("mine")); err != nil {
		t.Fatal(err)
	}
	ids := recorder.ids
	if len(ids) != 4 || ids[3] != "mine" {
		t.Fatalf("request ids %q", ids)
	}
	seen := map[string]bool{}
	for _, id := range ids[:3] {
		if len(id) != 32 || seen[id] {
			t.Errorf("request ids %q: want three distinct 32-digit keys", ids[:3])
		}
		seen[id] = true
	}
}

func TestStreamDroppedBeforeItsFirstEventSendsTheSameStartAgain(t *testing.T) {
	client, recorder := serveRecorder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var sequences []int64
	for ev, err := range client.Stream(ctx, "wf", map[string]int{"n": 1}) {
		if err != nil {
			t.Fatal(err)
		}
		sequences = append(sequences, ev.GetSequence())
	}
	if len(sequences) != 1 || sequences[0] != 1 {
		t.Errorf("events %v", sequences)
	}
	ids := recorder.ids
	if len(ids) != 2 || ids[0] == "" || ids[0] != ids[1] {
		t.Errorf("request ids %q: want the same key twice", ids)
	}
}
