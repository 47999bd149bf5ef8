// Prisma ORM with the PrismaNeon adapter (WebSocket Pool of @neondatabase/serverless)
// against a Wirepool gateway whose database has cache = "hint": a hinted $queryRaw,
// an UPDATE through Prisma, the hinted read again (served from the cache) and an
// unhinted read.  Prints one JSON object.  The table "Quote" holds one row
// (id 1, 'before'); the client must be generated from tests/js/prisma/schema.prisma.
// Usage: node prisma_neon_cache.mjs <gateway host:port> <postgresql:// connection string>
import { PrismaNeon } from "@prisma/adapter-neon";
import { neonConfig } from "@neondatabase/serverless";
import prismaClient from "@prisma/client";
import ws from "ws";

const { PrismaClient } = prismaClient;
const [gateway, connectionString] = process.argv.slice(2);
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = (host, port) => `${gateway}/v2?address=${host}:${port}`;
neonConfig.useSecureWebSocket = false;
neonConfig.pipelineTLS = false;
neonConfig.pipelineConnect = false;

const prisma = new PrismaClient({ adapter: new PrismaNeon({ connectionString, max: 2 }) });
const out = {};
try {
  const hinted = (id) => prisma.$queryRaw`/* wirepool:cache ttl=60 tags=quotes */ select text from "Quote" where id = ${id}`;
  out.first = await hinted(1);
  await prisma.$executeRaw`update "Quote" set text = 'after' where id = 1`;
  out.second = await hinted(1);
  out.plain = await prisma.$queryRaw`select text from "Quote" where id = ${1}`;
} catch (e) {
  out.fatal = { message: String(e && e.message), code: e && e.code };
} finally {
  await prisma.$disconnect();
}
console.log(JSON.stringify(out));
