// Runs the original README's WebSocket client as a glasses app used it:
// connect, then send the photos named on the command line; exits once the
// client has logged a complete response. The client is seed_client.ts, the
// README's snippet as it is (TypeScript, read the URL from COMPUTE_NODE_URL):
// Node 20 cannot strip types, so the compiler's transpileModule takes them
// out (nothing is checked), with the typescript package of clients/typescript.
//   COMPUTE_NODE_URL=ws://host:port/api/v1/ws node --experimental-websocket run_seed_client.mjs photo.jpg...
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const ts = createRequire(join(here, "../../clients/typescript/package.json"))("typescript");
const source = readFileSync(join(here, "seed_client.ts"), "utf8");
const { outputText } = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
});
const compiled = join(mkdtempSync(join(tmpdir(), "seed-client-")), "seed_client.mjs");
writeFileSync(compiled, outputText);
const { initializeWebSocket, sendPhotoToComputeNode } = await import(pathToFileURL(compiled).href);

// The app leaves after the first complete response the client logs.
const log = console.log;
console.log = (...args) => {
    log(...args);
    if (String(args[0]).startsWith("Compute Node response done:")) process.exit(0);
};
const photos = process.argv.slice(2).map((filename) => ({ filename, buffer: readFileSync(filename) }));
const ws = initializeWebSocket();
ws.addEventListener("open", () => photos.forEach(sendPhotoToComputeNode));
