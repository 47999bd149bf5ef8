// Prisma ORM with the PrismaNeonHttp adapter (@prisma/adapter-neon, built on
// neon()) against a Wirepool gateway's POST /sql.  Prints one JSON object.
// The table "Quote" must exist and be empty; the client must be generated
// from tests/js/prisma/schema.prisma (the Python test does both).
// Usage: node prisma_neon_http.mjs <http://host:port/sql> <postgresql:// connection string>
import { PrismaNeonHttp } from "@prisma/adapter-neon";
import { neonConfig } from "@neondatabase/serverless";
import prismaClient from "@prisma/client";

const { PrismaClient } = prismaClient;
const [endpoint, connectionString] = process.argv.slice(2);
neonConfig.fetchEndpoint = endpoint;

const prisma = new PrismaClient({ adapter: new PrismaNeonHttp(connectionString, {}) });
const out = {};
try {
  const a = await prisma.quote.create({ data: { text: "Simplicity is prerequisite for reliability.", author: "Dijkstra" } });
  await prisma.quote.createMany({ data: [{ text: "Talk is cheap.", author: "Torvalds" }, { text: "Anonymous wisdom." }] });
  out.createdId = typeof a.id;
  out.createdIsDate = a.created instanceof Date;
  out.byAuthor = (await prisma.quote.findMany({ where: { author: { not: null } }, orderBy: { text: "asc" },
                                                 select: { text: true, author: true } }));
  out.updated = (await prisma.quote.update({ where: { id: a.id }, data: { likes: { increment: 5 } } })).likes;
  out.count = await prisma.quote.count();
  // ($transaction is refused by PrismaNeonHttp itself: "Transactions are not supported in HTTP mode".)
  out.nulls = await prisma.quote.count({ where: { author: null } });
  out.updatedMany = (await prisma.quote.updateMany({ where: { author: null }, data: { author: "unknown" } })).count;
  out.raw = await prisma.$queryRaw`select ${6}::int * 7 as v`;
  try {
    await prisma.quote.create({ data: { text: "Talk is cheap." } });
    out.unique = null;
  } catch (e) {
    out.unique = { code: e.code, target: e.meta && (e.meta.target ?? e.meta.driverAdapterError?.cause?.constraint) };
  }
  await prisma.quote.delete({ where: { id: a.id } });
  out.final = await prisma.quote.count();
} catch (e) {
  out.fatal = { message: String(e && e.message), code: e && e.code };
}
console.log(JSON.stringify(out));
