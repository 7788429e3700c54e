/**
 * The `objection-tenancy` CLI as a user runs it: built with `npm run build`, run as `node dist/cli.js`
 * in a scratch directory holding a `tenancy.config.js` that requires the built package, against
 * MariaDB. Checks `--json` reports, exit codes, create/drop confirmation, `run <module>`, and Ctrl-C
 * (running tenants finish, no new one starts, exit 130). Also the progress printer on a fake TTY.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import knexFactory from 'knex';
import { createProgress, summarize } from '../lib/cli-output';
import { mysqlBackend, mysqlConnection, skipMysql } from './helpers/databases';
import { MIGRATION_NAMES, writeMigrations } from './helpers/migrations';

const root = path.resolve(__dirname, '..');
const TENANTS = ['k1', 'k2', 'k3', 'k4', 'k5'];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(cwd: string, args: string[], options: { env?: NodeJS.ProcessEnv; onStderr?: (text: string, child: ReturnType<typeof spawn>) => void } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(root, 'dist/cli.js'), ...args], { cwd, env: { ...process.env, ...options.env } });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      options.onStderr?.(stderr, child);
    });
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const CONFIG = (migrations: string, seeds: string) => `
const fs = require('node:fs');
const path = require('node:path');
const { createTenancy } = require(${JSON.stringify(path.join(root, 'dist/index.js'))});
const catalogFile = path.join(__dirname, 'catalog.json');
const read = () => JSON.parse(fs.readFileSync(catalogFile, 'utf8'));
const write = (ids) => fs.writeFileSync(catalogFile, JSON.stringify(ids));
const connection = ${JSON.stringify(mysqlConnection())};
const tenancy = createTenancy({
  knexConfig: (id) => ({ client: 'mysql2', connection: { ...connection, database: 'ot_ops_' + id }, pool: { max: 2 } }),
  tenantExists: (id) => read().includes(id),
  migrations: { directory: ${JSON.stringify(migrations)} },
  seeds: { directory: ${JSON.stringify(seeds)} },
  registerTenant: (id) => write([...read(), id]),
  unregisterTenant: (id) => write(read().filter((t) => t !== id)),
});
module.exports = { tenancy, listTenants: read };
`;

describe('objection-tenancy CLI (node dist/cli.js)', { skip: skipMysql }, () => {
  const backend = mysqlBackend('ops');
  const files = writeMigrations();
  const cwd = files.dir;
  const catalog = () => JSON.parse(fs.readFileSync(path.join(cwd, 'catalog.json'), 'utf8')) as string[];
  const tablesOf = async (id: string) => {
    const knex = knexFactory(backend.knexConfig(id));
    try {
      const [rows] = await knex.raw('select table_name as t from information_schema.tables where table_schema = database() order by 1');
      return (rows as { t: string }[]).map((r) => r.t);
    } finally {
      await knex.destroy();
    }
  };

  before(async () => {
    execFileSync('npm', ['run', 'build', '--silent'], { cwd: root, stdio: 'pipe' });
    fs.writeFileSync(path.join(cwd, 'tenancy.config.js'), CONFIG(files.migrations, files.seeds));
    fs.writeFileSync(path.join(cwd, 'catalog.json'), JSON.stringify(TENANTS));
    fs.writeFileSync(path.join(cwd, 'count-people.js'), "const { tenancy } = require('./tenancy.config.js');\nmodule.exports = async (id) => ({ id, n: Number((await tenancy.knex()('people').count({ n: '*' }))[0].n) });\n");
    fs.writeFileSync(path.join(cwd, 'fail-k2.js'), "exports.run = async (id) => { if (id === 'k2') throw new Error('k2 job broke'); return id; };\n");
    fs.writeFileSync(path.join(cwd, 'odd-k2.js'), "exports.run = async (id) => { if (id === 'k2') throw Object.create(null); return id; };\n");
    for (const id of [...TENANTS, 'k9']) await backend.dropDatabase(id);
    for (const id of TENANTS) await backend.createDatabase(id);
    const knex = knexFactory(backend.knexConfig('k3'));
    await knex.schema.createTable('pets', (t) => t.string('in_the_way'));
    await knex.destroy();
  });
  after(async () => {
    for (const id of [...TENANTS, 'k9']) await backend.dropDatabase(id);
    await backend.close();
    files.cleanup();
  });

  it('migrate --json: exit 1 when a tenant fails, the others migrated, a plain progress line per tenant', async () => {
    const run = await cli(cwd, ['migrate', '--json', '--concurrency', '2']);
    assert.equal(run.code, 1, run.stderr);
    const report = JSON.parse(run.stdout);
    assert.equal(report.operation, 'latest');
    assert.deepEqual(report.counts, { applied: 4, failed: 1 });
    const k3 = report.tenants.find((t: { tenantId: string }) => t.tenantId === 'k3');
    assert.equal(k3.error.code, 'TENANT_MIGRATION_FAILED');
    assert.equal(k3.error.migration, MIGRATION_NAMES[1]);
    assert.match(k3.error.cause.message, /pets/);
    assert.deepEqual(report.tenants[0].migrations, MIGRATION_NAMES);
    assert.equal(run.stderr.split('\n').filter((l) => /^\[\d\/5\] k\d /.test(l)).length, 5, run.stderr);
    assert.doesNotMatch(run.stderr, /keeps the process alive/, 'the process exited by itself');
  });

  it('status and rollback exit 0 with readable text; --tenants limits the run', async () => {
    const status = await cli(cwd, ['status', '--tenants', 'k1,k2', '--json']);
    assert.equal(status.code, 0, status.stderr);
    assert.deepEqual(JSON.parse(status.stdout).counts, { current: 2 });
    const rollback = await cli(cwd, ['rollback', '--tenants', 'k1']);
    assert.equal(rollback.code, 0, rollback.stderr);
    assert.match(rollback.stdout, /rollback: 1 tenant\(s\), rolled-back 1/);
    assert.deepEqual(await tablesOf('k1'), ['knex_migrations', 'knex_migrations_lock']);
    assert.equal((await cli(cwd, ['migrate', '--tenants', 'k1'])).code, 0);
    // --to: the same files on every tenant, whatever its batches.
    const to = await cli(cwd, ['rollback', '--to', MIGRATION_NAMES[0]!, '--tenants', 'k1,k2', '--json']);
    assert.equal(to.code, 0, to.stderr);
    assert.deepEqual(JSON.parse(to.stdout).tenants.map((t: { migrations: string[] }) => t.migrations), [
      [MIGRATION_NAMES[2], MIGRATION_NAMES[1]],
      [MIGRATION_NAMES[2], MIGRATION_NAMES[1]],
    ]);
    assert.deepEqual(await tablesOf('k2'), ['knex_migrations', 'knex_migrations_lock', 'people']);
    const wrong = await cli(cwd, ['rollback', '--to', 'no_such_file.js', '--tenants', 'k1']);
    assert.equal(wrong.code, 2, 'a --to that names no migration file is a usage error');
    assert.match(wrong.stderr, /options\.to must name a migration file/);
    assert.equal((await cli(cwd, ['status', '--to', MIGRATION_NAMES[0]!])).code, 2);
    // An invalid tenant id on the command line is a usage error too (exit 1 before stop 22).
    assert.equal((await cli(cwd, ['create', 'k9;drop'])).code, 2);
    // So is one in a --tenants list, checked before any tenant is touched.
    await cli(cwd, ['rollback', '--tenants', 'k1']);
    const listed = await cli(cwd, ['migrate', '--tenants', 'k1,acme corp']);
    assert.equal(listed.code, 2, listed.stderr);
    assert.match(listed.stderr, /Invalid tenant id/);
    assert.deepEqual(await tablesOf('k1'), ['knex_migrations', 'knex_migrations_lock'], 'k1 was migrated');
    assert.equal((await cli(cwd, ['migrate', '--tenants', 'k1,k2'])).code, 0);
  });

  it('run <module>: the exported function runs in every tenant scope; a throwing job exits 1', async () => {
    const ok = await cli(cwd, ['run', 'count-people.js', '--json', '--tenants', 'k1,k2,k4']);
    assert.equal(ok.code, 0, ok.stderr);
    const report = JSON.parse(ok.stdout);
    assert.deepEqual(report.tenants.map((t: { result: unknown }) => t.result), [{ id: 'k1', n: 0 }, { id: 'k2', n: 0 }, { id: 'k4', n: 0 }]);
    const failing = await cli(cwd, ['run', 'fail-k2.js', '--json', '--tenants', 'k1,k2']);
    assert.equal(failing.code, 1);
    const failed = JSON.parse(failing.stdout);
    assert.deepEqual(failed.counts, { ok: 1, failed: 1 });
    assert.equal(failed.tenants[1].error.message, 'k2 job broke');
    // A thrown value with no string form fails its tenant; the report is printed (it was lost, exit 2).
    for (const json of [[], ['--json']]) {
      const odd = await cli(cwd, ['run', 'odd-k2.js', ...json, '--tenants', 'k1,k2']);
      assert.equal(odd.code, 1, odd.stderr);
      if (json.length > 0) assert.deepEqual(JSON.parse(odd.stdout).counts, { ok: 1, failed: 1 });
      else assert.match(odd.stdout, /run: 2 tenant\(s\), ok 1, failed 1[\s\S]*k2 failed/);
    }
  });

  it('create, then drop: refused without --confirm (exit 2), done with it', async () => {
    const created = await cli(cwd, ['create', 'k9', '--json']);
    assert.equal(created.code, 0, created.stderr);
    assert.deepEqual(JSON.parse(created.stdout).migrations, MIGRATION_NAMES);
    assert.ok(await backend.databaseExists('k9'));
    assert.ok(catalog().includes('k9'));
    assert.equal((await cli(cwd, ['create', 'k9'])).code, 1, 'already exists');

    const refused = await cli(cwd, ['drop', 'k9']);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /--confirm k9/);
    const mismatch = await cli(cwd, ['drop', 'k9', '--confirm', 'k1']);
    assert.equal(mismatch.code, 2);
    assert.ok(await backend.databaseExists('k9'), 'nothing was dropped');

    const dropped = await cli(cwd, ['drop', 'k9', '--confirm', 'k9', '--json']);
    assert.equal(dropped.code, 0, dropped.stderr);
    assert.equal(JSON.parse(dropped.stdout).ok, true);
    assert.equal(await backend.databaseExists('k9'), false);
    assert.equal(catalog().includes('k9'), false);
  });

  it('Ctrl-C: the running tenant finishes its migrations, no new tenant starts, exit 130', async () => {
    assert.equal((await cli(cwd, ['rollback', '--all', '--tenants', 'k1,k2,k4,k5'])).code, 0);
    let sent = false;
    const run = await cli(cwd, ['migrate', '--json', '--concurrency', '1', '--tenants', 'k1,k2,k4,k5'], {
      env: { OT_MIGRATION_DELAY_MS: '300' },
      onStderr: (text, child) => {
        if (!sent && /\[1\/4\]/.test(text)) {
          sent = true;
          child.kill('SIGINT');
        }
      },
    });
    assert.equal(run.code, 130, run.stderr);
    assert.match(run.stderr, /finishing the tenants in progress/);
    const report = JSON.parse(run.stdout);
    assert.equal(report.aborted, true);
    assert.deepEqual(report.tenants.map((t: { status: string }) => t.status), ['applied', 'applied', 'skipped', 'skipped']);
    assert.deepEqual(report.tenants[1].migrations, MIGRATION_NAMES, 'the tenant running at Ctrl-C was not cut half-way');
    assert.ok(!(await tablesOf('k4')).includes('people'), 'a skipped tenant was not touched');
  });

  it('loads an ES module config (tenancy.config.mjs) as well', async () => {
    const esm = `import { createRequire } from 'node:module';\nconst { tenancy, listTenants } = createRequire(import.meta.url)('./tenancy.config.js');\nexport default { tenancy, listTenants };\n`;
    fs.writeFileSync(path.join(cwd, 'tenancy.config.mjs'), esm);
    const run = await cli(cwd, ['status', '--config', 'tenancy.config.mjs', '--tenants', 'k2', '--json']);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout).counts, { current: 1 });
  });

  it('loads a tenancy.config.js with top-level await in a "type": "module" project (require() throws ERR_REQUIRE_ASYNC_MODULE on Node >= 20.19)', async () => {
    const project = path.join(cwd, 'esm-project');
    fs.mkdirSync(project, { recursive: true });
    fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ type: 'module' }));
    const config =
      "import { createRequire } from 'node:module';\n" +
      "const { tenancy, listTenants } = createRequire(import.meta.url)('../tenancy.config.js');\n" +
      'await new Promise((resolve) => setTimeout(resolve, 10));\n' +
      'export default { tenancy, listTenants };\n';
    fs.writeFileSync(path.join(project, 'tenancy.config.js'), config);
    fs.writeFileSync(path.join(project, 'job.js'), "await Promise.resolve();\nexport default (id) => `ran ${id}`;\n");
    const status = await cli(project, ['status', '--tenants', 'k2', '--json']);
    assert.equal(status.code, 0, status.stderr);
    assert.deepEqual(JSON.parse(status.stdout).counts, { current: 1 });
    const job = await cli(project, ['run', 'job.js', '--tenants', 'k2', '--json']);
    assert.equal(job.code, 0, job.stderr);
    assert.deepEqual(JSON.parse(job.stdout).tenants.map((t: { result: unknown }) => t.result), ['ran k2']);
  });

  it("a config's close() that throws at once does not change the exit code; a listTenants() that is not an array is refused, not spread into characters", async () => {
    fs.writeFileSync(path.join(cwd, 'close-throws.config.js'), "const c = require('./tenancy.config.js');\nmodule.exports = { ...c, close() { throw new Error('close boom'); } };\n");
    const status = await cli(cwd, ['status', '--config', 'close-throws.config.js', '--tenants', 'k2', '--json']);
    assert.equal(status.code, 0, status.stderr);
    assert.equal(JSON.parse(status.stdout).ok, true);
    fs.writeFileSync(path.join(cwd, 'string-list.config.js'), "const c = require('./tenancy.config.js');\nmodule.exports = { ...c, listTenants: () => 'k1,k2' };\n");
    const listed = await cli(cwd, ['status', '--config', 'string-list.config.js']);
    assert.equal(listed.code, 2, listed.stderr);
    assert.match(listed.stderr, /TypeError|array/i);
    assert.doesNotMatch(listed.stderr, /\bk failed\b/);
    // A catalog that cannot be reached (fetch's TypeError) is the operation's failure, to retry: exit 1, not 2.
    fs.writeFileSync(path.join(cwd, 'down-list.config.js'), "const c = require('./tenancy.config.js');\nmodule.exports = { ...c, listTenants: () => Promise.reject(new TypeError('fetch failed')) };\n");
    const down = await cli(cwd, ['status', '--config', 'down-list.config.js']);
    assert.equal(down.code, 1, down.stderr);
    assert.match(down.stderr, /listTenants\(\) failed: fetch failed/);
    // The same from the tenancy's own options.listTenants (the README's config): exit 1 too, not 2.
    const own = CONFIG(files.migrations, files.seeds)
      .replace('module.exports = { tenancy, listTenants: read };', 'module.exports = { tenancy };')
      .replace('tenantExists: (id) => read().includes(id),', "tenantExists: (id) => read().includes(id),\n  listTenants: () => process.env.OT_LIST === 'set' ? new Set(read()) : Promise.reject(new TypeError('fetch failed')),");
    fs.writeFileSync(path.join(cwd, 'own-list.config.js'), own);
    const ownDown = await cli(cwd, ['status', '--config', 'own-list.config.js']);
    assert.equal(ownDown.code, 1, ownDown.stderr);
    assert.match(ownDown.stderr, /listTenants\(\) of the tenancy failed: fetch failed/);
    const ownSet = await cli(cwd, ['status', '--config', 'own-list.config.js', '--json'], { env: { ...process.env, OT_LIST: 'set' } });
    assert.equal(ownSet.code, 0, ownSet.stderr);
    assert.equal(JSON.parse(ownSet.stdout).ok, true);
    // A listTenants() that rejects with a value of no string form: exit 1 with a message, not a crash.
    fs.writeFileSync(path.join(cwd, 'odd-list.config.js'), "const c = require('./tenancy.config.js');\nmodule.exports = { ...c, listTenants: () => Promise.reject(Object.create(null)) };\n");
    for (const json of [[], ['--json']]) {
      const odd = await cli(cwd, ['status', '--config', 'odd-list.config.js', ...json]);
      assert.equal(odd.code, 1, odd.stderr);
      assert.match(odd.stderr, /objection-tenancy: the config's listTenants\(\) failed: \[object Object\]/);
    }
  });

  it('usage errors exit 2 with the usage text', async () => {
    const unknown = await cli(cwd, ['migrat']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown command "migrat"[\s\S]*Usage: objection-tenancy/);
    const noConfig = await cli(cwd, ['migrate', '--config', 'nope.js']);
    assert.equal(noConfig.code, 2);
    assert.match(noConfig.stderr, /config not found/);
    assert.equal((await cli(cwd, ['migrate', '--concurrency', 'many'])).code, 2);
    fs.writeFileSync(path.join(cwd, 'broken.config.js'), "throw new Error('catalog down');\n");
    const broken = await cli(cwd, ['status', '--config', 'broken.config.js']);
    assert.equal(broken.code, 2);
    assert.match(broken.stderr, /broken\.config\.js could not be loaded: catalog down/);
    // A job module that cannot be loaded is the command line's mistake too (it was exit 1).
    fs.writeFileSync(path.join(cwd, 'broken-job.js'), 'module.exports = async (id) => { this is not javascript };\n');
    const brokenJob = await cli(cwd, ['run', 'broken-job.js']);
    assert.equal(brokenJob.code, 2, brokenJob.stderr);
    assert.match(brokenJob.stderr, /broken-job\.js could not be loaded/);
    // Options that create and drop would silently ignore are refused (drop c3 --tenants c1 dropped c3).
    for (const args of [['create', 'k9', '--tenants', 'k'], ['drop', 'k9', '--yes', '--concurrency', '2'], ['migrate', '--yes'], ['status', '--no-seed']]) {
      const refused = await cli(cwd, args);
      assert.equal(refused.code, 2, `${args.join(' ')}: ${refused.stderr}`);
      assert.match(refused.stderr, /does not go with|only goes with/);
    }
    const help = await cli(cwd, ['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Exit codes/);
  });
});

describe('CLI progress printer', () => {
  const sink = (isTTY: boolean) => {
    const writes: string[] = [];
    return { writes, stream: { isTTY, columns: 100, write: (text: string) => writes.push(text) } };
  };
  const result = (tenantId: string, status: string) => ({ tenantId, status, durationMs: 5, migrations: ['001_a.js'], error: new Error('boom') });

  it('draws a bar in place on a TTY, with failures on their own lines', () => {
    const { writes, stream } = sink(true);
    const progress = createProgress(stream, 'migrate');
    progress.onResult(result('a', 'applied'), { done: 1, total: 3 });
    progress.onResult(result('b', 'failed'), { done: 2, total: 3 });
    progress.onResult(result('c', 'applied'), { done: 3, total: 3 });
    progress.finish();
    assert.match(writes[0]!, /^\r\x1b\[Kmigrate \[#{8}\.{16}\] 1\/3  applied 1/);
    assert.ok(writes.some((w) => w === '\r\x1b[Kb failed: boom\n'));
    assert.match(writes.at(-2)!, /\[#{24}\] 3\/3  applied 2  failed 1/);
    assert.equal(writes.at(-1), '\n');
  });

  it('prints one plain line per tenant otherwise', () => {
    const { writes, stream } = sink(false);
    const progress = createProgress(stream, 'migrate');
    progress.onResult(result('a', 'applied'), { done: 1, total: 2 });
    progress.onResult(result('b', 'failed'), { done: 2, total: 2 });
    assert.deepEqual(writes, ['[1/2] a applied (001_a.js) 5 ms\n', '[2/2] b failed: boom\n']);
  });

  it('prints a tenant id with control or invisible characters escaped, so it cannot forge or overwrite a line', () => {
    const forged = '\r\x1b[Kacme applied 12 ms';
    const hostile = [forged, 'a\nb', 'acme\u202e', 'acme\u0085', 'acme\u009b2J', 'acme\u2028', 'acme\u200b', 'acme applied'];
    for (const isTTY of [false, true]) {
      const { writes, stream } = sink(isTTY);
      const progress = createProgress(stream, 'migrate');
      hostile.forEach((id, i) => progress.onResult(result(id, 'failed'), { done: i + 1, total: hostile.length }));
      progress.finish();
      // What the printer itself writes on a TTY: "\r\x1b[K" before each line, "\n" after it.
      const printed = writes.join('').replaceAll('\r\x1b[K', '').replaceAll('\n', '');
      assert.doesNotMatch(printed, /[^\x20-\x7e]/, `isTTY ${isTTY}: ${JSON.stringify(printed)}`);
      assert.ok(writes.join('').includes(`"\\r\\u001b[Kacme applied 12 ms" failed: boom`), `isTTY ${isTTY}`);
    }
    const { writes, stream } = sink(false);
    const progress = createProgress(stream, 'migrate');
    for (const id of hostile) progress.onResult(result(id, 'failed'), { done: 1, total: 1 });
    assert.deepEqual(writes.map((w) => w.slice('[1/1] '.length, -' failed: boom\n'.length)), [
      '"\\r\\u001b[Kacme applied 12 ms"',
      '"a\\nb"',
      '"acme\\u202e"',
      '"acme\\u0085"',
      '"acme\\u009b2J"',
      '"acme\\u2028"',
      '"acme\\u200b"',
      '"acme applied"',
    ]);
    const summary = summarize('migrate', { ok: false, aborted: false, durationMs: 5, counts: { failed: 1 }, tenants: [result(forged, 'failed')] } as never);
    assert.match(summary, /^ {2}"\\r\\u001b\[Kacme applied 12 ms" failed: boom$/m);
    assert.doesNotMatch(summary, /[\r\x1b]/);
  });

  it("escapes control characters in a failure's message and in migration names too (a permissive tenantIdPattern lets such an id reach an error message)", () => {
    const { writes, stream } = sink(false);
    const progress = createProgress(stream, 'migrate');
    progress.onResult({ tenantId: 'k1', status: 'failed', durationMs: 1, error: new Error('Unknown tenant "\r\x1b[Kk1 applied"') } as never, { done: 1, total: 2 });
    progress.onResult({ tenantId: 'k2', status: 'applied', durationMs: 1, migrations: ['001\x1b[2J.js'] } as never, { done: 2, total: 2 });
    assert.deepEqual(writes, ['[1/2] k1 failed: Unknown tenant "\\u000d\\u001b[Kk1 applied"\n', '[2/2] k2 applied (001\\u001b[2J.js) 1 ms\n']);
  });

  it('prints ordinary ids as they are, letters of any script included', () => {
    const { writes, stream } = sink(false);
    const progress = createProgress(stream, 'migrate');
    progress.onResult(result('k1_a-B', 'applied'), { done: 1, total: 2 });
    progress.onResult(result('société', 'applied'), { done: 2, total: 2 });
    assert.deepEqual(writes, ['[1/2] k1_a-B applied (001_a.js) 5 ms\n', '[2/2] société applied (001_a.js) 5 ms\n']);
  });
});
