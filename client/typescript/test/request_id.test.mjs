// Every start carries a request id, and a stream that drops before its first event sends the
// same start again. Runs against a recording WorkflowService on 127.0.0.1 (node --test).
import assert from "node:assert/strict";
import http2 from "node:http2";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import { Client, RunEventSchema, RunResultSchema, WorkflowService } from "../dist/index.js";

async function recorder(t) {
  const ids = [];
  let streams = 0;
  const handler = connectNodeAdapter({
    routes(router) {
      router.service(WorkflowService, {
        async startAsync(request) {
          ids.push(request.requestId);
          return { runId: "r1", created: true };
        },
        async start(request) {
          ids.push(request.requestId);
          return { result: create(RunResultSchema, { runId: "r1" }) };
        },
        async *stream(request) {
          ids.push(request.requestId);
          streams += 1;
          if (streams === 1) {
            throw new ConnectError("this replica is shutting down", Code.Unavailable);
          }
          yield {
            event: create(RunEventSchema, {
              runId: "r1",
              sequence: 1n,
              payload: { case: "workflowFinish", value: {} },
            }),
          };
        },
      });
    },
  });
  const server = http2.createServer(handler);
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const client = Client.connect(`127.0.0.1:${server.address().port}`);
  t.after(() => {
    client.close();
    server.close();
  });
  return { client, ids };
}

test("every start carries a request id of its own", async (t) => {
  const { client, ids } = await recorder(t);
  await client.startAsync("wf", { n: 1 });
  await client.startAsync("wf", { n: 1 });
  await client.start("wf", null);
  await client.startAsync("wf", null, { requestId: "mine" });
  assert.equal(ids.length, 4);
  assert.equal(ids[3], "mine");
  assert.equal(new Set(ids.slice(0, 3)).size, 3);
  for (const id of ids.slice(0, 3)) assert.match(id, /^[0-9a-f]{32}$/);
});

test("a stream dropped before its first event sends the same start again", async (t) => {
  const { client, ids } = await recorder(t);
  const sequences = [];
  for await (const event of client.stream("wf", { n: 1 })) sequences.push(event.sequence);
  assert.deepEqual(sequences, [1n]);
  assert.equal(ids.length, 2);
  assert.ok(ids[0]);
  assert.equal(ids[1], ids[0]);
});
