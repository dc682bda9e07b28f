// The client against a real running node (VLMNODE_URL) whose worker runs jobs
// and whose Ollama is the project's fake one, which describes an image by its
// size and dominant colour. tests/test_typescript_client.py starts all of it
// and runs `npm test`; without VLMNODE_URL these tests are skipped.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";

import {
  answers,
  Code,
  ConnectError,
  createVlmNodeClient,
  createWritableIterable,
  isFinal,
  JobStatus,
  statusName,
  CREATE_TRIES,
  type AnswerChunk,
  type CreateJobRequest,
  type Interceptor,
  type InferInput,
  type Notice,
  type VlmNodeClient,
} from "../src/index.js";

const URL = process.env.VLMNODE_URL;
// A second node with TLS and a token, for the security tests.
const TLS_URL = process.env.VLMNODE_TLS_URL;
const CA_FILE = process.env.VLMNODE_CA_FILE;
const TOKEN = process.env.VLMNODE_TOKEN;
const DOMAIN_ID = process.env.VLMNODE_DOMAIN_ID ?? "";
const skip = URL ? false : "VLMNODE_URL is not set: these tests need a running node";
const fixture = (name: string) => readFile(new globalThis.URL(`../../test/fixtures/${name}`, import.meta.url));

/** Awaits a call that must fail, and returns its ConnectError. */
async function connectError(call: () => Promise<unknown>): Promise<ConnectError> {
  try {
    await call();
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${err}`);
    return err;
  }
  assert.fail("the call succeeded");
}

describe("VLM Node client", { skip }, () => {
  let client: VlmNodeClient;
  let red: Uint8Array;
  let blue: Uint8Array;

  before(async () => {
    client = createVlmNodeClient(URL!, { defaultTimeoutMs: 20_000 });
    [red, blue] = await Promise.all([fixture("red.jpg"), fixture("blue.jpg")]);
  });
  after(() => client.close());

  describe("jobs", () => {
    test("a vlm_only job is created, watched to completion, got, listed, retried", async () => {
      const job = await client.createJob({
        jobType: "vlm_only",
        domainId: DOMAIN_ID,
        query: { ids: [] },
        input: { vlm_prompt: "What colour?" },
      });
      assert.match(job.id, /^[0-9a-f-]{36}$/);
      assert.equal(job.status, JobStatus.PENDING);
      assert.equal(statusName(job.status), "pending");
      assert.deepEqual(job.query, { ids: [] }); // Struct arrives as a JSON object
      assert.deepEqual(job.input, { vlm_prompt: "What colour?" });
      assert.ok(job.createdAt && job.createdAt.seconds > 0n); // int64 seconds arrive as bigint

      const seen: JobStatus[] = [];
      for await (const update of client.watchJob(job.id)) seen.push(update.status);
      // The job as it is (the worker may have taken it already), then each change, then the end.
      assert.equal(seen.at(-1), JobStatus.COMPLETED, `statuses: ${seen.map(statusName)}`);
      assert.ok(seen.slice(0, -1).every((s) => !isFinal(s)));

      const done = await client.getJob(job.id);
      assert.equal(done.status, JobStatus.COMPLETED);
      assert.equal(done.error, undefined);
      const responses = (done.output?.responses ?? []) as { image_id: string; response: string }[];
      assert.equal(responses.length, 6);
      const colours = responses.map((r) => r.response).sort();
      assert.deepEqual(colours, [
        "a 64x48 image, mostly blue",
        "a 64x48 image, mostly green",
        "a 64x48 image, mostly red",
        "a 64x48 image, mostly red",
        "a 64x48 image, mostly red",
        "a 64x48 image, mostly white",
      ]);

      const listed = await client.listJobs();
      assert.ok(listed.some((j) => j.id === job.id));
      const completed = await client.listJobs({ status: JobStatus.COMPLETED, jobType: "vlm_only", limit: 10 });
      assert.deepEqual(
        completed.map((j) => j.id),
        [job.id],
      );
      assert.deepEqual(await client.listJobs({ status: JobStatus.FAILED }), []);

      // A finished job cannot be cancelled, but it can be retried with a new input.
      const refused = await connectError(() => client.cancelJob(job.id));
      assert.equal(refused.code, Code.FailedPrecondition, refused.message);
      const retried = await client.retryJob(job.id, "vlm_only", { vlm_prompt: "And now?" });
      assert.equal(retried.id, job.id);
      assert.equal(retried.status, JobStatus.PENDING);
      assert.deepEqual(retried.input, { vlm_prompt: "And now?" });
      const again = await client.waitForJob(job.id);
      assert.equal(again.status, JobStatus.COMPLETED);
      assert.ok(again.attempts >= 1);
    });

    test("an unknown job is a ConnectError with Code.NotFound", async () => {
      const id = randomUUID();
      const err = await connectError(() => client.getJob(id));
      assert.equal(err.code, Code.NotFound);
      assert.match(err.rawMessage, /not found/);
      const watched = await connectError(async () => {
        for await (const _ of client.watchJob(id)) assert.fail("an unknown job was watched");
      });
      assert.equal(watched.code, Code.NotFound);
      assert.equal((await connectError(() => client.cancelJob(id))).code, Code.NotFound);
    });

    test("bad input is a ConnectError with Code.InvalidArgument, a domain without data FailedPrecondition", async () => {
      const request = { domainId: DOMAIN_ID, query: { ids: [] }, input: { vlm_prompt: "x" } };
      const err = await connectError(() => client.createJob({ ...request, jobType: "task_timing_v9" }));
      assert.equal(err.code, Code.InvalidArgument);
      assert.match(err.rawMessage, /unknown job_type/);
      const notUuid = await connectError(() => client.createJob({ ...request, jobType: "vlm_only", domainId: "../etc" }));
      assert.equal(notUuid.code, Code.InvalidArgument);
      const noData = await connectError(() =>
        client.createJob({ ...request, jobType: "vlm_only", query: { ids: [randomUUID()] } }),
      );
      assert.equal(noData.code, Code.FailedPrecondition);
      assert.match(noData.rawMessage, /No data found/);
      const badList = await connectError(() => client.listJobs({ limit: -5 }));
      assert.equal(badList.code, Code.InvalidArgument);
    });

    /** The jobs the node holds under an idempotency key. */
    async function jobsWithKey(key: string) {
      return (await client.listJobs({ limit: 1000 })).filter((j) => j.idempotencyKey === key);
    }

    /** Cancels what a test made, so the worker is free for the tests after it. */
    async function tidy(id: string) {
      await client.cancelJob(id).catch(() => undefined);
    }

    test("a create whose answer was lost is sent again with its key, and makes one job", async () => {
      const keys: string[] = [];
      let answers = 0;
      // The node makes the job, but its answer never reaches the caller, as on a bad network.
      const losing: Interceptor = (next) => async (req) => {
        if (req.method.name !== "CreateJob" || req.stream) return next(req);
        keys.push((req.message as CreateJobRequest).idempotencyKey);
        const res = await next(req);
        if (answers++ === 0) throw new ConnectError("the answer was lost", Code.DeadlineExceeded);
        return res;
      };
      const flaky = createVlmNodeClient(URL!, { interceptors: [losing], defaultTimeoutMs: 20_000 });
      try {
        const request = { jobType: "vlm_only", domainId: DOMAIN_ID, query: { ids: [] }, input: { vlm_prompt: "hi" } };
        const job = await flaky.createJob(request);
        assert.equal(keys.length, 2);
        assert.match(keys[0], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/); // a new UUID per create
        assert.equal(keys[1], keys[0]);
        assert.equal(job.idempotencyKey, keys[0]);
        assert.deepEqual((await jobsWithKey(keys[0])).map((j) => j.id), [job.id]);
        await tidy(job.id);

        // Each create its own key; what the node refuses is not sent again.
        const other = await flaky.createJob(request);
        assert.notEqual(other.idempotencyKey, job.idempotencyKey);
        await tidy(other.id);
        const refused = await connectError(() => flaky.createJob({ ...request, jobType: "task_timing_v9" }));
        assert.equal(refused.code, Code.InvalidArgument);
        assert.equal(keys.length, 4);
      } finally {
        flaky.close();
      }
    });

    test("a create given up on at a 1 ms deadline, then made again with its key, makes one job", async () => {
      const idempotencyKey = `tiny-deadline-${randomUUID()}`;
      const request = { jobType: "vlm_only", domainId: DOMAIN_ID, query: { ids: [] }, input: { vlm_prompt: "hi" } };
      const tries: string[] = [];
      const counting: Interceptor = (next) => async (req) => {
        if (req.method.name === "CreateJob") tries.push((req.message as CreateJobRequest).idempotencyKey);
        return next(req);
      };
      const hasty = createVlmNodeClient(URL!, { interceptors: [counting] });
      try {
        const err = await connectError(() => hasty.createJob({ ...request, idempotencyKey }, { timeoutMs: 1 }));
        assert.equal(err.code, Code.DeadlineExceeded, err.message);
        assert.deepEqual(tries, Array(CREATE_TRIES).fill(idempotencyKey)); // the client's own tries, one key
      } finally {
        hasty.close();
      }
      // The node may have made the job all the same: the same key gets that one.
      const job = await client.createJob({ ...request, idempotencyKey });
      assert.equal(job.idempotencyKey, idempotencyKey);
      assert.deepEqual((await jobsWithKey(idempotencyKey)).map((j) => j.id), [job.id]);
      await tidy(job.id);
    });
  });

  describe("infer", () => {
    test("two frames make one answer, streamed in chunks", async () => {
      async function* frames(): AsyncGenerator<InferInput> {
        yield { id: "red", image: red, capturedAt: new Date() };
        yield { id: "blue", image: blue };
      }
      const chunks: AnswerChunk[] = [];
      // gemma3 sees several images at once (a one-image model such as moondream gets one contact sheet).
      const options = { prompt: "What colours?", batchSize: 2, model: "gemma3:4b" };
      for await (const chunk of client.infer(frames(), options)) chunks.push(chunk);
      assert.ok(chunks.length > 1, `${chunks.length} chunk(s)`);
      assert.ok(chunks.slice(0, -1).every((c) => !c.done));
      const last = chunks.at(-1)!;
      assert.equal(chunks.map((c) => c.text).join(""), "a 64x48 image, mostly red; a 64x48 image, mostly blue");
      assert.equal(last.done, true);
      assert.equal(last.answerId, 1);
      assert.deepEqual(last.frameIds, ["red", "blue"]);
      assert.equal(last.framesDropped, 0);
    });

    test("frames, prompts and flushes written as they come; frames before a prompt wait for it", async () => {
      const inputs = createWritableIterable<InferInput>();
      const notices: Notice[] = [];
      let noticed!: () => void;
      const firstNotice = new Promise<void>((resolve) => (noticed = resolve));
      const writer = (async () => {
        await inputs.write({ id: "early", image: red });
        await inputs.write({ flush: true });
        await firstNotice; // the node had no prompt yet: it said so and kept the frame
        await inputs.write({ prompt: "What colour now?" }); // which answers it
      })();
      const got = [];
      const options = {
        onNotice: (notice: Notice) => {
          notices.push(notice);
          noticed();
        },
      };
      for await (const answer of answers(client.infer(inputs, { batchSize: 5, flushAfterSeconds: -1 }, options))) {
        got.push(answer);
        inputs.close(); // one answer is all we want: ending the inputs ends the stream
      }
      await writer;
      assert.equal(notices.length, 1);
      assert.equal(notices[0].message, "No prompt received for image batch");
      assert.deepEqual(notices[0].frameIds, ["early"]);
      assert.deepEqual(got, [{ answerId: 1, text: "a 64x48 image, mostly red", frameIds: ["early"], framesDropped: 0 }]);
    });

    test("a reader that stops early cancels the stream; an aborted signal is Code.Canceled", async () => {
      const frames = createWritableIterable<InferInput>();
      void frames.write({ id: "red", image: red });
      for await (const chunk of client.infer(frames, { prompt: "What colour?", batchSize: 1 })) {
        assert.ok(chunk.text);
        break; // the inputs are still open: only cancelling ends this call
      }
      const stopped = new AbortController();
      stopped.abort();
      const err = await connectError(async () => {
        for await (const _ of client.infer([], { prompt: "x" }, { signal: stopped.signal })) assert.fail("answered");
      });
      assert.equal(err.code, Code.Canceled);
      assert.ok(Array.isArray(await client.listJobs({ limit: 1 })));
    });

    test("a bad config is a ConnectError", async () => {
      const err = await connectError(async () => {
        for await (const _ of client.infer([{ id: "x", image: new Uint8Array([1, 2, 3]) }], { batchSize: -1 })) {
          assert.fail("answered a bad config");
        }
      });
      assert.equal(err.code, Code.InvalidArgument, err.message);
    });
  });

  test("a token goes out as an authorization: Bearer header", async () => {
    const headers: (string | null)[] = [];
    const spy: Interceptor = (next) => async (req) => {
      headers.push(req.header.get("authorization"));
      return next(req);
    };
    const withToken = createVlmNodeClient(URL!, { token: "s3cret", interceptors: [spy] });
    const without = createVlmNodeClient(URL!, { interceptors: [spy] });
    try {
      await withToken.listJobs({ limit: 1 });
      await without.listJobs({ limit: 1 });
    } finally {
      withToken.close();
      without.close();
    }
    assert.deepEqual(headers, ["Bearer s3cret", null]);
  });
});

describe("a node with TLS and a token", { skip: TLS_URL ? false : "VLMNODE_TLS_URL is not set" }, () => {
  test("trusts the given CA and sends the token; without the token the node refuses", async () => {
    const ca = await readFile(CA_FILE!);
    const allowed = createVlmNodeClient(TLS_URL!, { ca, token: TOKEN });
    const stranger = createVlmNodeClient(TLS_URL!, { ca });
    try {
      assert.ok(Array.isArray(await allowed.listJobs({ limit: 1 })));
      const err = await connectError(() => stranger.listJobs({ limit: 1 }));
      assert.equal(err.code, Code.Unauthenticated, err.message);
    } finally {
      allowed.close();
      stranger.close();
    }
  });
});
