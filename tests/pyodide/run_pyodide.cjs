#!/usr/bin/env node
// Runs a Python script inside Pyodide (WebAssembly CPython) under Node, with
// the checkout's `driver/` package mounted, and prints ONE JSON document on
// stdout: {"ok": true, "result": <the script's `result`>, "timings": {...}}
// or {"ok": false, "error": "<traceback>", "timings": {...}}.
//
// Usage:
//   node tests/pyodide/run_pyodide.cjs [options] script.py      (or "-" / no file: stdin)
// Options:
//   --args JSON        made available to the script as the global `ARGS` (parsed)
//   --mount DIR=PATH   mount host directory DIR at PATH inside Pyodide and add
//                      PATH to sys.path (repeatable).  The checkout's driver/
//                      is always mounted at /wirepool/driver (/wirepool is on
//                      sys.path): nothing else of the checkout is importable.
//   --no-websocket     do not expose globalThis.WebSocket (for "no WebSocket" tests)
//
// The script runs with top-level await (runPythonAsync) in a fresh namespace.
// Python's own stdout/stderr go to this process's stderr, so stdout carries the
// JSON document only.  Pyodide loads entirely from tests/js/node_modules.
"use strict";

const fs = require("fs");
const path = require("path");

const ROOT = path.resolve(__dirname, "..", "..");
const JS_MODULES = path.join(ROOT, "tests", "js", "node_modules");

function requireFromTests(name) {
  return require(require.resolve(name, { paths: [JS_MODULES] }));
}

function parseArgs(argv) {
  const opts = { args: null, mounts: [], script: null, websocket: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--args") opts.args = JSON.parse(argv[++i]);
    else if (a === "--mount") {
      const spec = argv[++i];
      const eq = spec.indexOf("=");
      if (eq < 0) throw new Error(`--mount expects DIR=PATH, got ${spec}`);
      opts.mounts.push([path.resolve(spec.slice(0, eq)), spec.slice(eq + 1)]);
    } else if (a === "--no-websocket") opts.websocket = false;
    else if (opts.script === null) opts.script = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  return opts;
}

function readStdin() {
  return fs.readFileSync(0, "utf8");
}

async function main() {
  const t0 = performance.now();
  const opts = parseArgs(process.argv.slice(2));
  const source = opts.script === null || opts.script === "-" ? readStdin() : fs.readFileSync(opts.script, "utf8");
  if (opts.websocket && typeof globalThis.WebSocket === "undefined") {
    globalThis.WebSocket = requireFromTests("ws");
  }
  const { loadPyodide } = requireFromTests("pyodide");
  const py = await loadPyodide({
    stdout: (line) => process.stderr.write(line + "\n"),
    stderr: (line) => process.stderr.write(line + "\n"),
  });
  const tLoaded = performance.now();
  // Only driver/ of the checkout: the gateway and tests are not importable.
  py.FS.mkdirTree("/wirepool/driver");
  py.mountNodeFS("/wirepool/driver", path.join(ROOT, "driver"));
  const extraPaths = [];
  for (const [dir, mnt] of opts.mounts) {
    py.FS.mkdirTree(mnt);
    py.mountNodeFS(mnt, dir);
    extraPaths.push(mnt);
  }
  const ns = py.globals.get("dict")();
  py.globals.set("__wp_paths", py.toPy(["/wirepool", ...extraPaths]));
  py.globals.set("__wp_args", JSON.stringify(opts.args));
  py.runPython(`
import sys, json
for p in reversed(__wp_paths):
    if p not in sys.path:
        sys.path.insert(0, p)
`);
  ns.set("ARGS", py.runPython("json.loads(__wp_args)"));
  ns.set("__name__", "__main__");
  const out = { ok: true, result: null, timings: {} };
  const tRun = performance.now();
  try {
    await py.runPythonAsync(source, { globals: ns, filename: opts.script || "<stdin>" });
    const resultJson = py.runPython(
      "import json\ndef __wp_dump(ns):\n    return json.dumps(ns.get('result'), default=str)\n__wp_dump",
    )(ns);
    out.result = JSON.parse(resultJson);
  } catch (e) {
    out.ok = false;
    out.error = String(e && e.message ? e.message : e);
  }
  const tEnd = performance.now();
  out.timings = {
    load_ms: Math.round(tLoaded - t0),
    run_ms: Math.round(tEnd - tRun),
    total_ms: Math.round(tEnd - t0),
  };
  process.stdout.write(JSON.stringify(out) + "\n");
  // Open WebSockets / timers must not keep Node alive.
  process.exit(out.ok ? 0 : 1);
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e) }) + "\n");
  process.exit(2);
});
