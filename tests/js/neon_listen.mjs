// The Neon serverless driver's Client (WebSocket) as a LISTEN client of a Wirepool gateway.
// Usage: node neon_listen.mjs <gateway host:port> <postgresql:// connection string> <channel> <count>
// Prints "ready" once LISTEN is answered, then one JSON object when <count>
// notifications arrived (or after 60 s): {payloads, pids, notices}.
import { Client, neonConfig } from "@neondatabase/serverless";
import ws from "ws";

const [gateway, connectionString, channel, count] = process.argv.slice(2);
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = (host, port) => `${gateway}/v2?address=${host}:${port}`;
neonConfig.useSecureWebSocket = false;
neonConfig.pipelineTLS = false;
neonConfig.pipelineConnect = false;

const out = { payloads: [], pids: [], notices: [] };
const want = Number(count);
const client = new Client({ connectionString });
let finish;
const done = new Promise((resolve) => { finish = resolve; });
const timer = setTimeout(() => { out.timeout = true; finish(); }, 60000);
client.on("notification", (msg) => {
  if (msg.channel !== channel) return;
  out.payloads.push(msg.payload);
  out.pids.push(msg.processId);
  if (out.payloads.length >= want) finish();
});
client.on("notice", (msg) => out.notices.push(msg.message));
try {
  await client.connect();
  const r = await client.query(`LISTEN "${channel}"`);
  out.command = r.command;
  console.log("ready");
  await done;
} catch (e) {
  out.fatal = { code: e.code, message: String(e && e.message) };
} finally {
  clearTimeout(timer);
  await client.end().catch(() => {});
}
console.log(JSON.stringify(out));
