// Package stepline is the Go client for Stepline durable workflows
// (stepline.v1.WorkflowService over gRPC).
//
// The generated messages and stubs live in package steplinev1
// (github.com/stepline/stepline/client/go/stepline/v1); this package is a thin layer over
// them: JSON in and out, errors with their google.rpc details decoded, and event streams as
// iterators that reconnect from the last sequence when the connection drops.
//
//	client, err := stepline.Dial("127.0.0.1:50051")
//	if err != nil { ... }
//	defer client.Close()
//	res, err := client.Start(ctx, "greet", map[string]any{"name": "Ada"})
//	fmt.Println(res.GetStatus(), res.GetResult().AsInterface()) // RUN_STATUS_SUCCESS map[message:HELLO, ADA!]
//	for ev, err := range client.Watch(ctx, res.GetRunId()) {
//		if err != nil { ... }
//		fmt.Println(ev.GetSequence(), stepline.EventType(ev))
//	}
//
// Every method returns a *Error when the call fails; status.Code(err) works on it too.
package stepline
