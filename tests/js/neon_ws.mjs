// Drives the real @neondatabase/serverless driver (WebSocket mode) against a
// Wirepool gateway and prints one JSON object with what it observed.
// The table neon_rb (x int) must exist and be empty (the Python test creates it).
// Usage: node neon_ws.mjs <gateway host:port> <postgresql:// connection string> <pipelineConnect: false|password> [secure]
// "secure": wss:// (trust a test CA with NODE_EXTRA_CA_CERTS).
import { Pool, neonConfig } from "@neondatabase/serverless";
import ws from "ws";

const [gateway, connectionString, pipeline, secure] = process.argv.slice(2);
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = (host, port) => `${gateway}/v2?address=${host}:${port}`;
neonConfig.useSecureWebSocket = secure === "secure";
neonConfig.pipelineTLS = false;
neonConfig.pipelineConnect = pipeline === "password" ? "password" : false;

const out = {};
const pool = new Pool({ connectionString, max: 3 });
try {
  const typed = await pool.query(
    "select $1::int as i, $2::text as t, $3::bytea as b, $4::timestamptz as ts, $5::jsonb as j",
    [42, "héllo", Buffer.from([0, 1, 2, 255]), new Date("2024-01-02T03:04:05.678Z"), JSON.stringify({ a: [1, 2] })],
  );
  const r = typed.rows[0];
  out.typed = { i: r.i, t: r.t, b: Buffer.from(r.b).toString("hex"), ts: r.ts.toISOString(), j: r.j };

  const client = await pool.connect();
  try {
    await client.query("begin");
    await client.query("insert into neon_rb values (1)");
    const inside = await client.query("select count(*)::int as n from neon_rb");
    await client.query("rollback");
    const after = await client.query("select count(*)::int as n from neon_rb");
    out.rollback = { inside: inside.rows[0].n, after: after.rows[0].n };
  } finally {
    client.release();
  }

  try {
    await pool.query("select * from no_such_table_xyz");
    out.error = null;
  } catch (e) {
    out.error = { code: e.code, message: e.message };
  }
  const many = await Promise.all([1, 2, 3, 4, 5].map((n) => pool.query("select $1::int * 2 as v", [n])));
  out.concurrent = many.map((q) => q.rows[0].v);
} catch (e) {
  out.fatal = { code: e.code, message: String(e && e.message) };
} finally {
  await pool.end().catch(() => {});
}
console.log(JSON.stringify(out));
