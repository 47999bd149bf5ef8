#!/usr/bin/env node
// Local runner for the quotes worker: executes deploy/worker/src/entry.py
// inside Pyodide under Node (the same WebAssembly CPython Cloudflare's Python
// Workers use) behind a small Node HTTP server.  Every incoming request is
// turned into a WHATWG `Request` (Node's global) and passed to the worker's
// `Default(ctx, env).fetch(request)`; its `Response` is written back.
//
//   node deploy/worker/local/run_local.cjs --port 8787 --database-url 'ws://127.0.0.1:8432/quotes?token=...'
//   (or DATABASE_URL in the environment; --port 0 picks a free port)
//
// Prints one JSON line on stdout when ready: {"port": N, "load_ms": ...}; logs go to stderr.
// Pyodide and ws are resolved from deploy/worker/node_modules, then tests/js/node_modules.
"use strict";

const http = require("http");
const path = require("path");

const WORKER = path.resolve(__dirname, "..");
const ROOT = path.resolve(WORKER, "..", "..");
const MODULE_DIRS = [path.join(WORKER, "node_modules"), path.join(ROOT, "tests", "js", "node_modules")];

function load(name) {
  return require(require.resolve(name, { paths: MODULE_DIRS }));
}

function parseArgs(argv) {
  const o = { port: 8787, host: "127.0.0.1", databaseUrl: process.env.DATABASE_URL || "", entrypoint: "class" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--port") o.port = Number(argv[++i]);
    else if (a === "--host") o.host = argv[++i];
    else if (a === "--database-url") o.databaseUrl = argv[++i];
    else if (a === "--on-fetch") o.entrypoint = "on_fetch";
    else throw new Error(`unexpected argument ${a}`);
  }
  if (!o.databaseUrl) throw new Error("DATABASE_URL (or --database-url) is required");
  return o;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const t0 = performance.now();
  if (typeof globalThis.WebSocket === "undefined") globalThis.WebSocket = load("ws");
  const { loadPyodide } = load("pyodide");
  const py = await loadPyodide({
    stdout: (l) => process.stderr.write(l + "\n"),
    stderr: (l) => process.stderr.write(l + "\n"),
  });
  for (const [mnt, dir] of [["/wp/driver", path.join(ROOT, "driver")], ["/wp/src", path.join(WORKER, "src")],
                            ["/wp/shim", __dirname]]) {
    py.FS.mkdirTree(mnt);
    py.mountNodeFS(mnt, dir);
  }
  py.globals.set("__wp_db_url", opts.databaseUrl);
  py.globals.set("__wp_style", opts.entrypoint);
  await py.runPythonAsync(`
import sys, json, base64, types
sys.path[:0] = ["/wp", "/wp/src", "/wp/shim"]
import entry
_env = types.SimpleNamespace(DATABASE_URL=__wp_db_url)

async def __wp_handle(request):
    if __wp_style == "on_fetch":
        resp = await entry.on_fetch(request, _env)
    else:
        resp = await entry.Default(None, _env).fetch(request)
    return json.dumps({"status": resp.status, "headers": resp.headers,
                       "body": base64.b64encode(resp.body).decode()})
`);
  const handle = py.globals.get("__wp_handle");
  const loadMs = Math.round(performance.now() - t0);

  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    const url = `http://${req.headers.host || "localhost"}${req.url}`;
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) headers.set(k, Array.isArray(v) ? v.join(", ") : v);
    const init = { method: req.method, headers };
    if (!["GET", "HEAD"].includes(req.method)) init.body = body;
    const started = performance.now();
    try {
      const out = JSON.parse(await handle(new Request(url, init)));
      const payload = Buffer.from(out.body, "base64");
      res.writeHead(out.status, { ...out.headers, "content-length": payload.length,
                                  "x-worker-ms": (performance.now() - started).toFixed(1) });
      res.end(payload);
    } catch (e) {
      process.stderr.write(`worker error: ${e && e.stack ? e.stack : e}\n`);
      const payload = Buffer.from(JSON.stringify({ error: "worker exception" }));
      res.writeHead(500, { "content-type": "application/json", "content-length": payload.length });
      res.end(payload);
    }
  });
  server.listen(opts.port, opts.host, () => {
    process.stdout.write(JSON.stringify({ port: server.address().port, load_ms: loadMs }) + "\n");
  });
  const stop = () => server.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  process.stderr.write(`${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
