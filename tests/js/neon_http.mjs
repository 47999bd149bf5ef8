// Drives the real @neondatabase/serverless `neon()` function (SQL over HTTP)
// against a Wirepool gateway's POST /sql and prints one JSON object with
// what it observed.  The table neon_http_t (id int primary key, v text) must
// exist and be empty (the Python test creates it).
// Usage: node neon_http.mjs <http://host:port/sql> <postgresql:// connection string> [api token] [scenario]
import { neon, neonConfig, NeonDbError } from "@neondatabase/serverless";

const [endpoint, connectionString, token, scenario] = process.argv.slice(2);
neonConfig.fetchEndpoint = endpoint;

function err(e) {
  const o = { isNeonDbError: e instanceof NeonDbError, message: String(e && e.message) };
  for (const k of ["code", "severity", "detail", "hint", "position", "schema", "table", "column",
                   "constraint", "routine", "file", "line", "where"]) {
    if (e && e[k] !== undefined) o[k] = e[k];
  }
  return o;
}

async function attempt(fn) {
  try {
    return { ok: await fn() };
  } catch (e) {
    return { error: err(e) };
  }
}

const out = {};
try {
  if (scenario === "token") {
    // authToken instead of the password (connection string has none).
    const sql = neon(connectionString, { authToken: token });
    out.token = await attempt(async () => (await sql`select current_user as u, ${7}::int * 6 as v`)[0]);
    const bad = neon(connectionString, { authToken: token + "-wrong" });
    out.badToken = await attempt(() => bad`select 1`);
  } else if (scenario === "auth") {
    const sql = neon(connectionString);
    out.result = await attempt(() => sql`select 1 as one`);
  } else {
    const sql = neon(connectionString);
    // Single query: one parameter of each kind; rows as objects (the default).
    const typed = await sql.query(
      "select $1::int as i, $2::text as t, $3::bytea as b, $4::timestamptz as ts, $5::jsonb as j, " +
        "$6::int as n, $7::int[] as arr, $8::text[] as tarr, $9::bool as bo, $10::numeric as num, $11::int8 as big",
      [42, "héllo \"q\" 'x'", Buffer.from([0, 1, 2, 255]), new Date("2024-01-02T03:04:05.678Z"),
        JSON.stringify({ a: [1, 2] }), null, [1, 2, 3], ["a b", null, "c,\"d\""], true, "12345.678901234567890",
        9007199254740993n],
    );
    const r = typed[0];
    out.typed = {
      i: r.i, t: r.t, b: Buffer.from(r.b).toString("hex"), ts: r.ts.toISOString(), j: r.j, n: r.n,
      arr: r.arr, tarr: r.tarr, bo: r.bo, num: r.num, big: String(r.big),
    };
    // tagged template
    out.template = await sql`select ${20}::int + 1 as v, ${"x"} || 'y' as s`;
    // array mode + full results
    const arr = neon(connectionString, { arrayMode: true, fullResults: true });
    const full = await arr`select 1::int as a, 'two'::text as b union all select 3, null`;
    out.arrayMode = { rows: full.rows, rowCount: full.rowCount, command: full.command,
                      fields: full.fields, rowAsArray: full.rowAsArray };
    const objFull = neon(connectionString, { fullResults: true });
    const of = await objFull`select 5 as five`;
    out.objectMode = { rows: of.rows, rowAsArray: of.rowAsArray, command: of.command, rowCount: of.rowCount };
    // no rows / DML
    const ins = await objFull`insert into neon_http_t values (100, 'x'), (101, 'y')`;
    out.insert = { command: ins.command, rowCount: ins.rowCount, rows: ins.rows };
    await sql`delete from neon_http_t`;

    // Batch that commits.
    const committed = await sql.transaction([
      sql`insert into neon_http_t values (1, 'one')`,
      sql`insert into neon_http_t values (${2}, ${"two"})`,
      sql`select count(*)::int as n from neon_http_t`,
    ]);
    out.commit = { inside: committed[2][0].n, after: (await sql`select count(*)::int as n from neon_http_t`)[0].n };

    // Batch rolled back by an error in its last statement.
    out.rollback = await attempt(() => sql.transaction([
      sql`insert into neon_http_t values (3, 'three')`,
      sql`select * from no_such_table_neon_http`,
    ]));
    out.afterRollback = (await sql`select count(*)::int as n from neon_http_t`)[0].n;

    // Read-only batch: a write fails with 25006 and nothing is written.
    out.readOnly = await attempt(() => sql.transaction([sql`insert into neon_http_t values (4, 'four')`],
                                                       { readOnly: true }));
    // Isolation / read only / deferrable are applied to the batch's transaction.
    const iso = await sql.transaction([
      sql`select current_setting('transaction_isolation') as iso, current_setting('transaction_read_only') as ro,
              current_setting('transaction_deferrable') as de`,
    ], { isolationLevel: "Serializable", readOnly: true, deferrable: true });
    out.isolation = iso[0][0];
    const iso2 = await sql.transaction((tx) => [tx`select current_setting('transaction_isolation') as iso`],
                                       { isolationLevel: "RepeatableRead" });
    out.isolation2 = iso2[0][0].iso;
    // Batch with per-query array mode
    const mixed = await sql.transaction([sql`select 1 as a`, sql.query("select 2 as b", [], { arrayMode: true })]);
    out.mixed = mixed;

    // Errors with their SQLSTATE and other fields.
    out.divZero = await attempt(() => sql`select 1/0`);
    out.unique = await attempt(() => sql`insert into neon_http_t values (1, 'dup')`);
    out.syntax = await attempt(() => sql`selec 1`);
    // after errors the gateway still serves
    out.final = (await sql`select count(*)::int as n from neon_http_t`)[0].n;
  }
} catch (e) {
  out.fatal = err(e);
}
console.log(JSON.stringify(out));
