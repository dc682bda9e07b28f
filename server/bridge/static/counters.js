// The live view's tally: frames sent (numbered from 1 in send order),
// answered and dropped, the answers, and the answer streaming in.

export class LiveTally {
  sent = 0;
  answered = 0;
  dropped = 0;
  answers = 0;
  current = null; // the answer streaming in: {number, text, done, frames}

  /** A frame is sent: its number. */
  frameSent() {
    this.sent += 1;
    return this.sent;
  }

  /**
   * A chunk of an answer (ws_protocol.js's readMessage): the answer it
   * belongs to, the same object for each chunk until the last.
   */
  answerChunk(chunk) {
    if (!this.current) {
      this.answers += 1;
      this.current = { number: this.answers, text: "", done: false, frames: [] };
    }
    const answer = this.current;
    answer.text += chunk.text;
    if (chunk.done) {
      answer.done = true;
      answer.frames = chunk.frames;
      this.answered += chunk.frames.length;
      if (chunk.framesDropped !== null) this.dropped = chunk.framesDropped;
      this.current = null;
    }
    return answer;
  }

  /** The answer streaming in ends unfinished (the stream was refused or closed). */
  cutOff() {
    this.current = null;
  }

  summary() {
    return `${this.sent} sent · ${this.answered} answered · ${this.dropped} dropped`;
  }
}

/** [3, 1, 2, 7] -> "#1–#3, #7" */
export function frameList(numbers) {
  if (!numbers.length) return "none";
  const sorted = [...numbers].sort((a, b) => a - b);
  const ranges = [];
  let from = sorted[0];
  let to = sorted[0];
  const flush = () => ranges.push(from === to ? `#${from}` : `#${from}–#${to}`);
  for (const n of sorted.slice(1)) {
    if (n === to + 1) to = n;
    else {
      flush();
      from = to = n;
    }
  }
  flush();
  return ranges.join(", ");
}
