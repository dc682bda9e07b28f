// @vlmnode/client: the VLM Node API for Node.js over gRPC (HTTP/2).

export {
  answers,
  bearerToken,
  CREATE_RETRY_WAIT_MS,
  CREATE_TRIES,
  createVlmNodeClient,
  FINAL_STATUSES,
  isFinal,
  statusName,
  VlmNodeClient,
  type Answer,
  type InferConfig,
  type InferInput,
  type InferOptions,
  type VlmNodeClientOptions,
} from "./client.js";
export * from "./gen/vlmnode/v1/jobs_pb.js";
export * from "./gen/vlmnode/v1/inference_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";
export { createWritableIterable, type WritableIterable } from "@connectrpc/connect/protocol";
export type { CallOptions, Interceptor } from "@connectrpc/connect";
export type { JsonObject, JsonValue } from "@bufbuild/protobuf";
