// A job's statuses and types as the API names them, which of them allow
// what, and their words on the page.

export const STATUSES = ["pending", "running", "completing", "uploading", "completed", "failed", "cancelling", "cancelled"];
export const JOB_TYPES = ["task_timing_v1", "vlm_only"];
export const FINAL = new Set(["completed", "failed", "cancelled"]);
export const ACTIVE = new Set(["running", "completing", "uploading", "cancelling"]);
/** The API's rules: retry a finished job; cancel one that is still to finish. */
export const RETRYABLE = FINAL;
export const CANCELLABLE = new Set(["pending", "running", "completing", "uploading"]);

const STATUS_WORDS = {
  pending: "Pending",
  running: "Running",
  completing: "Completing",
  uploading: "Uploading",
  completed: "Completed",
  failed: "Failed",
  cancelling: "Cancelling",
  cancelled: "Cancelled",
};

const STATUS_HINTS = {
  pending: "waiting for a worker",
  running: "captioning images",
  completing: "the LLM is deciding start and end",
  uploading: "delivering to the webhook",
  completed: "",
  failed: "stopped with an error",
  cancelling: "stopping",
  cancelled: "",
};

const TYPE_WORDS = { task_timing_v1: "Task timing", vlm_only: "Captions only" };

export const statusWord = (status) => STATUS_WORDS[status] || status || "Unknown";
export const statusHint = (status) => STATUS_HINTS[status] || "";
export const typeWord = (type) => TYPE_WORDS[type] || type;
