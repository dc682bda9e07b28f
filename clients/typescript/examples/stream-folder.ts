// A glasses app in a few lines: streams a folder of JPEGs to a node as if
// they came from the camera, and prints the answers as they stream back.
//
//   node dist/examples/stream-folder.js DIR --prompt "What is on the shelf?" \
//     [--url http://localhost:50051] [--token T] [--batch-size N] \
//     [--interval-ms 200] [--model moondream:1.8b] [--num-predict N]

import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { ConnectError, createVlmNodeClient, type InferInput } from "../src/index.js";

const usage = `usage: stream-folder DIR --prompt TEXT [--url URL] [--token TOKEN] [--batch-size N]
                     [--interval-ms MS] [--model NAME] [--num-predict N]`;

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        prompt: { type: "string" },
        url: { type: "string", default: process.env.VLMNODE_URL ?? "http://localhost:50051" },
        token: { type: "string", default: process.env.VLMNODE_TOKEN },
        "batch-size": { type: "string", default: "0" },
        "interval-ms": { type: "string", default: "0" },
        model: { type: "string", default: "" },
        "num-predict": { type: "string", default: "0" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    console.error(`${(err as Error).message}\n${usage}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(usage);
    return 0;
  }
  if (positionals.length !== 1 || !values.prompt) {
    console.error(usage);
    return 2;
  }
  const dir = positionals[0];
  const files = (await readdir(dir)).filter((name) => /\.jpe?g$/i.test(name)).sort();
  if (files.length === 0) {
    console.error(`no .jpg or .jpeg files in ${dir}`);
    return 1;
  }
  const intervalMs = Number(values["interval-ms"]);

  // An async generator is the camera: one frame per file, paced like one.
  async function* camera(): AsyncGenerator<InferInput> {
    for (const [n, name] of files.entries()) {
      if (n > 0 && intervalMs > 0) await new Promise((resolve) => setTimeout(resolve, intervalMs));
      const path = join(dir, name);
      const [image, info] = await Promise.all([readFile(path), stat(path)]);
      yield { id: name, image, capturedAt: info.mtime };
    }
  }

  const client = createVlmNodeClient(values.url, { token: values.token });
  try {
    const chunks = client.infer(
      camera(),
      {
        prompt: values.prompt,
        batchSize: Number(values["batch-size"]),
        model: values.model,
        numPredict: Number(values["num-predict"]),
      },
      { onNotice: (notice) => console.error(`notice: ${notice.message} (${notice.frameIds.join(", ")})`) },
    );
    let started = false;
    for await (const chunk of chunks) {
      if (!started) {
        process.stdout.write(`answer ${chunk.answerId}: `);
        started = true;
      }
      process.stdout.write(chunk.text);
      if (chunk.done) {
        const dropped = chunk.framesDropped ? `, ${chunk.framesDropped} dropped so far` : "";
        process.stdout.write(`\n  frames: ${chunk.frameIds.join(", ")}${dropped}\n`);
        started = false;
      }
    }
    return 0;
  } catch (err) {
    if (err instanceof ConnectError) {
      console.error(`error: ${err.message}`);
      return 1;
    }
    throw err;
  } finally {
    client.close();
  }
}

process.exitCode = await main();
