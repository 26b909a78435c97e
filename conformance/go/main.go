// Command stepline-conformance-go runs conformance/scenario.json against a live server with
// the Go client.
//
//	stepline-conformance-go --target 127.0.0.1:50051 [--scenario PATH]
//
// It prints "ok <id>" / "FAIL <id>: why" per step and "go: N passed, N failed", and exits 1
// when a step failed. For `restart_server` it prints "@@restart" ("@@restart crash" with
// "crash") and waits for a line on stdin (conformance/run.py restarts the server, then
// answers "ok").
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"iter"
	"os"
	"reflect"
	"strings"
	"time"
	"unicode"

	stepline "github.com/stepline/stepline/client/go"
	pb "github.com/stepline/stepline/client/go/stepline/v1"
	"google.golang.org/grpc/codes"
)

const restartRequest = "@@restart"

type step map[string]any

type mismatch struct{ msg string }

func (m mismatch) Error() string { return m.msg }

func failf(format string, args ...any) error { return mismatch{fmt.Sprintf(format, args...)} }

func check(what string, got, want any) error {
	if !reflect.DeepEqual(normalize(got), normalize(want)) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		return failf("%s: got %s, want %s", what, g, w)
	}
	return nil
}

// normalize round-trips a value through JSON so that Go values compare like the scenario's.
func normalize(v any) any {
	raw, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	if err := json.Unmarshal(raw, &out); err != nil {
		return v
	}
	return out
}

// codeName is the canonical gRPC name of a code: InvalidArgument -> INVALID_ARGUMENT.
func codeName(c codes.Code) string {
	if c == codes.Canceled {
		return "CANCELLED"
	}
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

func runStatus(s pb.RunStatus) string { return strings.TrimPrefix(s.String(), "RUN_STATUS_") }

func checkError(err *stepline.Error, want map[string]any) error {
	if e := check("code", codeName(err.Code), want["code"]); e != nil {
		return e
	}
	if reason, ok := want["reason"]; ok {
		if e := check("reason", err.Reason, reason); e != nil {
			return e
		}
	}
	if fields, ok := want["field_violations"]; ok {
		got := []string{}
		for _, v := range err.FieldViolations {
			got = append(got, v.Field)
		}
		return check("field violations", got, fields)
	}
	return nil
}

func checkResult(res *pb.RunResult, want map[string]any) error {
	if status, ok := want["status"]; ok {
		if e := check("status", runStatus(res.GetStatus()), status); e != nil {
			return e
		}
	}
	if result, ok := want["result"]; ok {
		if e := check("result", res.GetResult().AsInterface(), result); e != nil {
			return e
		}
	}
	if suspended, ok := want["suspended"]; ok {
		got := []map[string]any{}
		for _, s := range res.GetSuspended() {
			got = append(got, map[string]any{"path": s.GetPath(), "labels": s.GetLabels()})
		}
		return check("suspended", got, suspended)
	}
	return nil
}

func checkEvents(events []*pb.RunEvent, want []any) error {
	if e := check("event count", len(events), len(want)); e != nil {
		return e
	}
	for i, ev := range events {
		expected, _ := want[i].(map[string]any)
		label := fmt.Sprintf("event %d", ev.GetSequence())
		if e := check(label+" sequence", ev.GetSequence(), expected["sequence"]); e != nil {
			return e
		}
		if e := check(label+" type", stepline.EventType(ev), expected["type"]); e != nil {
			return e
		}
		if s, ok := expected["step"]; ok {
			if e := check(label+" step", stepline.StepID(ev), s); e != nil {
				return e
			}
		}
		finish := ev.GetWorkflowFinish()
		if s, ok := expected["status"]; ok {
			if e := check(label+" status", runStatus(finish.GetStatus()), s); e != nil {
				return e
			}
		}
		if r, ok := expected["result"]; ok {
			if e := check(label+" result", finish.GetResult().AsInterface(), r); e != nil {
				return e
			}
		}
	}
	return nil
}

func collect(events iter.Seq2[*pb.RunEvent, error]) ([]*pb.RunEvent, error) {
	var all []*pb.RunEvent
	for ev, err := range events {
		if err != nil {
			return all, err
		}
		all = append(all, ev)
	}
	return all, nil
}

// watch is an open Watch read a few events at a time.
type watch struct {
	next func() (*pb.RunEvent, error, bool)
	stop func()
}

type driver struct {
	client  *stepline.Client
	runs    map[string]string
	watches map[string]*watch
	restart func(crash bool) error
}

func (d *driver) runID(s step) (string, error) {
	if id, ok := s["run_id"].(string); ok {
		return id, nil
	}
	name, _ := s["run"].(string)
	id, ok := d.runs[name]
	if !ok {
		return "", failf("no run saved as %q (an earlier step failed)", name)
	}
	return id, nil
}

func (d *driver) save(s step, runID string) {
	if name, ok := s["save"].(string); ok {
		d.runs[name] = runID
	}
}

func (d *driver) execute(ctx context.Context, s step) error {
	want, _ := s["expect"].(map[string]any)
	if want == nil {
		want = map[string]any{}
	}
	err := d.dispatch(ctx, s, want)
	var rpcErr *stepline.Error
	if errors.As(err, &rpcErr) {
		wantErr, ok := want["error"].(map[string]any)
		if !ok {
			return failf("unexpected error %v", rpcErr)
		}
		return checkError(rpcErr, wantErr)
	}
	if err != nil {
		return err
	}
	if wantErr, ok := want["error"].(map[string]any); ok {
		return failf("expected %v, the call succeeded", wantErr["code"])
	}
	return nil
}

func (d *driver) dispatch(ctx context.Context, s step, want map[string]any) error {
	workflow, _ := s["workflow"].(string)
	label, _ := s["label"].(string)
	input := s["input"]
	switch s["do"] {
	case "start":
		res, err := d.client.Start(ctx, workflow, input)
		if err != nil {
			return err
		}
		d.save(s, res.GetRunId())
		return checkResult(res, want)
	case "start_async":
		res, err := d.client.StartAsync(ctx, workflow, input)
		if err != nil {
			return err
		}
		d.save(s, res.GetRunId())
		if created, ok := want["created"]; ok {
			return check("created", res.GetCreated(), created)
		}
		return nil
	case "get_result":
		id, err := d.runID(s)
		if err != nil {
			return err
		}
		wait, _ := s["wait_seconds"].(float64)
		res, err := d.client.GetResult(ctx, id, stepline.WaitUpTo(time.Duration(wait*float64(time.Second))))
		if err != nil {
			return err
		}
		return checkResult(res, want)
	case "resume":
		id, err := d.runID(s)
		if err != nil {
			return err
		}
		res, err := d.client.Resume(ctx, id, s["data"], stepline.WithLabel(label))
		if err != nil {
			return err
		}
		return checkResult(res, want)
	case "resume_async":
		id, err := d.runID(s)
		if err != nil {
			return err
		}
		res, err := d.client.ResumeAsync(ctx, id, s["data"], stepline.WithLabel(label))
		if err != nil {
			return err
		}
		if after, ok := want["after_sequence"]; ok {
			return check("after_sequence", res.GetAfterSequence(), after)
		}
		return nil
	case "cancel":
		id, err := d.runID(s)
		if err != nil {
			return err
		}
		res, err := d.client.Cancel(ctx, id)
		if err != nil {
			return err
		}
		if e := check("status", runStatus(res.GetStatus()), want["status"]); e != nil {
			return e
		}
		if requested, ok := want["cancel_requested"]; ok {
			return check("cancel_requested", res.GetCancelRequested(), requested)
		}
		return nil
	case "stream":
		events, err := collect(d.client.Stream(ctx, workflow, input))
		if len(events) > 0 {
			d.save(s, events[0].GetRunId())
		}
		if err != nil {
			return err
		}
		expected, _ := want["events"].([]any)
		return checkEvents(events, expected)
	case "watch":
		id, err := d.runID(s)
		if err != nil {
			return err
		}
		after, _ := s["after_sequence"].(float64)
		events, err := collect(d.client.Watch(ctx, id, stepline.AfterSequence(int64(after))))
		if err != nil {
			return err
		}
		expected, _ := want["events"].([]any)
		return checkEvents(events, expected)
	case "watch_open":
		id, err := d.runID(s)
		if err != nil {
			return err
		}
		after, _ := s["after_sequence"].(float64)
		opts := []stepline.Option{stepline.AfterSequence(int64(after))}
		if keep, _ := s["keep_open_on_suspend"].(bool); keep {
			opts = append(opts, stepline.KeepOpenOnSuspend())
		}
		// The watch outlives this step, so it gets the driver's context, not the step's.
		next, stop := iter.Pull2(d.client.Watch(context.Background(), id, opts...))
		w := &watch{next: next, stop: stop}
		name, _ := s["name"].(string)
		d.watches[name] = w
		return nextEvents(w, want)
	case "watch_next":
		name, _ := s["name"].(string)
		w, ok := d.watches[name]
		if !ok {
			return failf("no open watch %q (an earlier step failed)", name)
		}
		return nextEvents(w, want)
	case "restart_server":
		crash, _ := s["crash"].(bool)
		return d.restart(crash)
	}
	return failf("unknown step kind %v", s["do"])
}

// nextEvents reads as many events as expected; with "end", the watch must then be over.
func nextEvents(w *watch, want map[string]any) error {
	expected, _ := want["events"].([]any)
	var events []*pb.RunEvent
	for range expected {
		ev, err, ok := w.next()
		if !ok {
			break
		}
		if err != nil {
			return err
		}
		events = append(events, ev)
	}
	if e := checkEvents(events, expected); e != nil {
		return e
	}
	if end, _ := want["end"].(bool); end {
		ev, err, ok := w.next()
		if err != nil {
			return err
		}
		if ok {
			return failf("watch went on after the expected events: %d", ev.GetSequence())
		}
	}
	return nil
}

func run() (int, error) {
	target := flag.String("target", "", "host:port of the server")
	scenarioPath := flag.String("scenario", "conformance/scenario.json", "the scenario file")
	flag.Parse()
	if *target == "" {
		return 2, errors.New("--target host:port is required")
	}
	raw, err := os.ReadFile(*scenarioPath)
	if err != nil {
		return 2, err
	}
	var scenario struct {
		Steps []step `json:"steps"`
	}
	if err := json.Unmarshal(raw, &scenario); err != nil {
		return 2, err
	}
	client, err := stepline.Dial(*target)
	if err != nil {
		return 2, err
	}
	defer client.Close()
	stdin := bufio.NewScanner(os.Stdin)
	d := &driver{
		client:  client,
		runs:    map[string]string{},
		watches: map[string]*watch{},
		restart: func(crash bool) error {
			if crash {
				fmt.Println(restartRequest + " crash")
			} else {
				fmt.Println(restartRequest)
			}
			if !stdin.Scan() || strings.TrimSpace(stdin.Text()) != "ok" {
				return failf("the runner did not restart the server: %q", stdin.Text())
			}
			return nil
		},
	}
	defer func() {
		for _, w := range d.watches {
			w.stop()
		}
	}()
	passed, failed := 0, 0
	for _, s := range scenario.Steps {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := d.execute(ctx, s)
		cancel()
		if err != nil {
			failed++
			fmt.Printf("FAIL %v: %v\n", s["id"], err)
		} else {
			passed++
			fmt.Printf("ok   %v\n", s["id"])
		}
	}
	fmt.Printf("go: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1, nil
	}
	return 0, nil
}

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "stepline-conformance-go:", err)
	}
	os.Exit(code)
}
