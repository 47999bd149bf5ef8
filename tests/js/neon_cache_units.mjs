// The Neon serverless driver (node-postgres over WebSocket) against a Wirepool gateway whose
// database has cache = "hint": the two shapes of a cacheable unit that node-postgres sends
//  - "named": a query with { name } -- Parse of a named statement inside the unit (a new
//    connection sends Parse+Bind+Describe+Execute+Sync, the same connection later Bind only);
//  - "split": neonConfig.coalesceWrites = false -- every message in its own WebSocket frame,
//    so the unit reaches the gateway in several reads.
// Each runs on a fresh connection.  Prints one JSON object: the texts read.
// Usage: node neon_cache_units.mjs <gateway host:port> <postgresql:// connection string> <id text>
// <id text>: a spelling of id 1 ("1 ", " 1"...) for a third, uncached use of the named statement
// (Bind only: the gateway must create the statement on whichever server it gets).
import { Client, neonConfig } from "@neondatabase/serverless";
import ws from "ws";

const [gateway, connectionString, idText] = process.argv.slice(2);
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = (host, port) => `${gateway}/v2?address=${host}:${port}`;
neonConfig.useSecureWebSocket = false;
neonConfig.pipelineTLS = false;
neonConfig.pipelineConnect = false;

const HINT = "/* wirepool:cache ttl=60 tags=quotes */ ";
const out = {};
async function withClient(coalesce, fn) {
  neonConfig.coalesceWrites = coalesce;
  const c = new Client({ connectionString });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}
try {
  out.named = await withClient(true, async (c) => {
    const q = { name: "by_id", text: HINT + "select text from quotes where id = $1", values: [1] };
    const first = (await c.query(q)).rows[0].text;   // Parse "by_id" + Bind + Describe + Execute + Sync
    const second = (await c.query(q)).rows[0].text;  // Bind "by_id" + Describe + Execute + Sync
    const third = (await c.query({ ...q, values: [idText] })).rows[0].text;  // a new key: to Postgres
    return [first, second, third];
  });
  out.split = await withClient(false, async (c) => {
    const sql = HINT + "select text from quotes where id = $1";
    return [(await c.query(sql, [2])).rows[0].text, (await c.query(sql, [2])).rows[0].text];
  });
  out.plain = await withClient(true, async (c) => (await c.query("select text from quotes where id = 1")).rows[0].text);
} catch (e) {
  out.fatal = { code: e.code, message: String(e && e.message) };
}
console.log(JSON.stringify(out));
