// The ergonomic client: one HTTP/2 connection to a node, gRPC protocol,
// the JobService calls as promises and async iterables, and infer() over the
// bidirectional InferenceService.Infer stream.

import { randomUUID } from "node:crypto";

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ConnectError, Code, createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import {
  InferenceService,
  InferRequestSchema,
  type AnswerChunk,
  type InferRequest,
  type Notice,
  type StreamConfigSchema,
} from "./gen/vlmnode/v1/inference_pb.js";
import {
  JobService,
  JobStatus,
  type CreateJobRequestSchema,
  type Job,
  type ListJobsRequestSchema,
} from "./gen/vlmnode/v1/jobs_pb.js";
import type { JsonObject } from "@bufbuild/protobuf";

export interface VlmNodeClientOptions {
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** More interceptors; they run after (inside) the one that adds the token. */
  interceptors?: Interceptor[];
  /** Deadline for calls that set no `timeoutMs` of their own. */
  defaultTimeoutMs?: number;
  /** PEM certificates to trust for an https:// node (e.g. the node's own CA); default: the system's. */
  ca?: string | Uint8Array;
}

/** The three kinds of message a realtime stream carries after its config. */
export type InferInput =
  | { image: Uint8Array; id?: string; capturedAt?: Date }
  | { prompt: string }
  | { flush: true };

/** Settings that open a realtime stream: model, prompt, batchSize, numPredict, temperature, flushAfterSeconds. */
export type InferConfig = MessageInitShape<typeof StreamConfigSchema>;

export interface InferOptions extends CallOptions {
  /** Called with notices, such as frames that arrived before any prompt. */
  onNotice?: (notice: Notice) => void;
}

/** A whole answer, put together from its chunks by `answers()`. */
export interface Answer {
  answerId: number;
  text: string;
  frameIds: string[];
  framesDropped: number;
}

/**
 * A create that did not reach the node, or whose answer did not come back in
 * time, is sent again with the same idempotency key (the node answers a key
 * it has seen with the job the first create made): at most this many tries
 * in all, the second CREATE_RETRY_WAIT_MS after the first, doubling, less up
 * to half at random.
 */
export const CREATE_TRIES = 3;
export const CREATE_RETRY_WAIT_MS = 500;
const RETRIED_CODES: ReadonlySet<Code> = new Set([Code.Unavailable, Code.DeadlineExceeded]);

/** Waits `ms`, or rejects with the signal's reason once it aborts. */
function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const stop = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", stop);
      resolve();
    }, ms);
    signal?.addEventListener("abort", stop, { once: true });
  });
}

export const FINAL_STATUSES: ReadonlySet<JobStatus> = new Set([
  JobStatus.COMPLETED,
  JobStatus.FAILED,
  JobStatus.CANCELLED,
]);

/** True for completed, failed and cancelled: a watch ends after one of them. */
export function isFinal(status: JobStatus): boolean {
  return FINAL_STATUSES.has(status);
}

/** The status as REST spells it: JobStatus.PENDING -> "pending". */
export function statusName(status: JobStatus): string {
  return (JobStatus[status] ?? "UNSPECIFIED").toLowerCase();
}

/** A ConnectError for a StreamError: "INVALID_ARGUMENT" -> Code.InvalidArgument. */
function streamError(name: string, message: string): ConnectError {
  const key = name.toLowerCase().replace(/(^|_)(\w)/g, (_, _sep, c: string) => c.toUpperCase()) as keyof typeof Code;
  return new ConnectError(message, Code[key] ?? Code.Unknown);
}

/** An interceptor that adds `authorization: Bearer <token>`. */
export function bearerToken(token: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

function toRequest(input: InferInput): InferRequest {
  if ("image" in input) {
    return create(InferRequestSchema, {
      message: {
        case: "frame",
        value: {
          id: input.id ?? "",
          image: input.image,
          capturedAt: input.capturedAt ? timestampFromDate(input.capturedAt) : undefined,
        },
      },
    });
  }
  if ("prompt" in input) {
    return create(InferRequestSchema, { message: { case: "prompt", value: { text: input.prompt } } });
  }
  if ("flush" in input) {
    return create(InferRequestSchema, { message: { case: "flush", value: {} } });
  }
  throw new TypeError("an infer input needs one of image, prompt or flush");
}

/** Puts chunks together into whole answers, yielding each when its last chunk arrives. */
export async function* answers(chunks: AsyncIterable<AnswerChunk>): AsyncGenerator<Answer> {
  let text = "";
  for await (const chunk of chunks) {
    text += chunk.text;
    if (chunk.done) {
      yield { answerId: chunk.answerId, text, frameIds: [...chunk.frameIds], framesDropped: chunk.framesDropped };
      text = "";
    }
  }
}

export class VlmNodeClient {
  /** The generated clients, for anything the helpers do not cover. */
  readonly jobs: Client<typeof JobService>;
  readonly inference: Client<typeof InferenceService>;
  readonly url: string;
  private readonly sessions: Http2SessionManager;

  constructor(url: string, options: VlmNodeClientOptions = {}) {
    // http:// is h2c (HTTP/2 with prior knowledge), https:// is HTTP/2 over TLS.
    this.url = url.includes("://") ? url : `http://${url}`;
    this.sessions = new Http2SessionManager(this.url, undefined, options.ca ? { ca: Buffer.from(options.ca) } : undefined);
    const interceptors = [...(options.token ? [bearerToken(options.token)] : []), ...(options.interceptors ?? [])];
    const transport = createGrpcTransport({
      baseUrl: this.url,
      sessionManager: this.sessions,
      interceptors,
      defaultTimeoutMs: options.defaultTimeoutMs,
    });
    this.jobs = createClient(JobService, transport);
    this.inference = createClient(InferenceService, transport);
  }

  /**
   * Queues a job; a query that matches no data fails with FailedPrecondition "No data found".
   *
   * Safe to repeat: the create carries `idempotencyKey` (a new UUID when the
   * request has none), and the node answers a key it has seen with the job
   * the first create made. A try that failed with Unavailable or
   * DeadlineExceeded (`timeoutMs` is per try) is sent again with the same
   * key, CREATE_TRIES tries in all. To retry a failed create yourself without
   * risking a second job, give your own key and give it again.
   */
  async createJob(request: MessageInitShape<typeof CreateJobRequestSchema>, options: CallOptions = {}): Promise<Job> {
    const once = { ...request, idempotencyKey: request.idempotencyKey || randomUUID() };
    for (let tries = 1; ; tries++) {
      try {
        return required((await this.jobs.createJob(once, options)).job);
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (tries >= CREATE_TRIES || !RETRIED_CODES.has(code) || options.signal?.aborted) throw err;
      }
      await pause(CREATE_RETRY_WAIT_MS * 2 ** (tries - 1) * (0.5 + Math.random() / 2), options.signal);
    }
  }

  /** Jobs, newest first; filters by status and jobType, pages by limit and offset. */
  async listJobs(request: MessageInitShape<typeof ListJobsRequestSchema> = {}, options?: CallOptions): Promise<Job[]> {
    return (await this.jobs.listJobs(request, options)).jobs;
  }

  /** One job; a ConnectError with Code.NotFound when unknown. */
  async getJob(id: string, options?: CallOptions): Promise<Job> {
    return required((await this.jobs.getJob({ id }, options)).job);
  }

  /** Takes a finished job back to pending with a new input. */
  async retryJob(id: string, jobType: string, input: JsonObject, options?: CallOptions): Promise<Job> {
    return required((await this.jobs.retryJob({ id, jobType, input }, options)).job);
  }

  /** Stops a pending job at once and a running one at its next step. */
  async cancelJob(id: string, options?: CallOptions): Promise<Job> {
    return required((await this.jobs.cancelJob({ id }, options)).job);
  }

  /** The job as it is, then again at every change of status; ends after a final status. */
  async *watchJob(id: string, options: CallOptions = {}): AsyncGenerator<Job> {
    const responses = stoppable(options, (callOptions) => this.jobs.watchJob({ id }, callOptions));
    for await (const response of responses) yield required(response.job);
  }

  /** Watches a job until it is completed, failed or cancelled, and returns it then. */
  async waitForJob(id: string, options?: CallOptions): Promise<Job> {
    let last: Job | undefined;
    for await (const job of this.watchJob(id, options)) {
      last = job;
      if (isFinal(job.status)) return job;
    }
    throw new ConnectError(
      `watch of job ${id} ended while it was ${last ? statusName(last.status) : "unseen"}`,
      Code.Unavailable,
    );
  }

  /**
   * Opens a realtime stream: sends `config`, then each input (frames,
   * prompts, flushes) as the iterable yields it, and yields the answer chunks
   * as the node sends them. When the inputs end the node answers what is
   * queued and the stream ends. Breaking out of the loop cancels the call.
   */
  async *infer(
    inputs: AsyncIterable<InferInput> | Iterable<InferInput>,
    config: InferConfig = {},
    options: InferOptions = {},
  ): AsyncGenerator<AnswerChunk> {
    const { onNotice, ...callOptions } = options;
    async function* requests(): AsyncGenerator<InferRequest> {
      yield create(InferRequestSchema, { message: { case: "config", value: config } });
      for await (const input of inputs) yield toRequest(input);
    }
    const responses = stoppable(callOptions, (linked) => this.inference.infer(requests(), linked));
    for await (const response of responses) {
      if (response.message.case === "chunk") yield response.message.value;
      else if (response.message.case === "notice") onNotice?.(response.message.value);
      // The node's reason, sent just before it ends the stream with that status.
      else if (response.message.case === "error") throw streamError(response.message.value.code, response.message.value.message);
    }
  }

  /** Closes the connection and any open streams. */
  close(): void {
    this.sessions.abort();
  }
}

/**
 * Runs a streaming call so that a reader who stops early (break, return,
 * throw) cancels it: Connect's response iterables have no return(), so
 * without this the HTTP/2 stream would stay open and the call's deadline
 * timer would keep the process alive.
 */
async function* stoppable<T>(options: CallOptions, open: (options: CallOptions) => AsyncIterable<T>): AsyncGenerator<T> {
  const controller = new AbortController();
  const outer = options.signal;
  const follow = () => controller.abort(outer?.reason);
  if (outer?.aborted) follow();
  else outer?.addEventListener("abort", follow, { once: true });
  const it = open({ ...options, signal: controller.signal })[Symbol.asyncIterator]();
  let ended = false;
  try {
    for (;;) {
      let result: IteratorResult<T>;
      try {
        result = await it.next();
      } catch (err) {
        ended = true;
        throw err;
      }
      if (result.done) {
        ended = true;
        return;
      }
      yield result.value;
    }
  } finally {
    outer?.removeEventListener("abort", follow);
    if (!ended) {
      controller.abort(new ConnectError("the reader stopped", Code.Canceled));
      await it.next().catch(() => undefined); // the abort surfaces here and Connect cleans up
    }
  }
}

function required(job: Job | undefined): Job {
  if (!job) throw new ConnectError("the node sent an answer without a job", Code.Internal);
  return job;
}

/** A client for the node at `url` ("http://host:50051" for h2c, "https://..." for TLS). */
export function createVlmNodeClient(url: string, options: VlmNodeClientOptions = {}): VlmNodeClient {
  return new VlmNodeClient(url, options);
}
