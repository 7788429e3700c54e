/**
 * The package as users get it: `npm pack`, the tarball installed into a scratch app beside knex,
 * objection and mysql2, then smoke tests through `require` and through `import` against MariaDB,
 * including a scope opened by one module system seen by the other and by a second copy of the package.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { mysqlBackend, mysqlConnection, skipMysql } from './helpers/databases';

const root = path.resolve(__dirname, '..');
const backend = mysqlBackend('pack');

const COMMON = `
const conn = ${JSON.stringify(mysqlConnection())};
const config = (id) => ({ client: 'mysql2', connection: { ...conn, database: 'ot_pack_' + id }, pool: { max: 2 } });
`;

const CJS_SMOKE = `${COMMON}
const assert = require('node:assert/strict');
const { createTenancy, TenantModel, runWithTenant, currentTenantId, TenantContextMissingError } = require('objection-tenancy');
const copy = require('objection-tenancy-copy');
class Person extends TenantModel { static get tableName() { return 'persons'; } }
(async () => {
  const tenancy = createTenancy({ knexConfig: config });
  for (const id of ['a', 'b']) {
    const names = await runWithTenant(id, async () => (await Person.query()).map((p) => p.name));
    assert.deepEqual(names, [id + '-person']);
    await runWithTenant(id, async () => assert.equal(copy.currentTenantId(), id, 'a second copy of the package sees the scope'));
  }
  await assert.rejects(async () => Person.query(), (e) => e instanceof TenantContextMissingError && e.code === 'TENANT_CONTEXT_MISSING');
  // A join between a central model of one copy and a tenant model of the other is refused as within
  // one copy (one statement runs on one connection): it ran, and read the wrong database's rows.
  const { Model } = require('objection');
  const central = require('knex')(config('a'));
  class CentralPerson extends copy.centralModel(Model, central) { static get tableName() { return 'persons'; } }
  class TenantPerson extends TenantModel {
    static get tableName() { return 'persons'; }
    static get relationMappings() { return { twin: { relation: Model.HasOneRelation, modelClass: CentralPerson, join: { from: 'persons.id', to: 'persons.id' } } }; }
  }
  CentralPerson.relationMappings = { twin: { relation: Model.HasOneRelation, modelClass: TenantPerson, join: { from: 'persons.id', to: 'persons.id' } } };
  const fetched = await runWithTenant('b', () => TenantPerson.query().withGraphFetched('twin').first());
  assert.equal(fetched.twin.name, 'a-person', 'withGraphFetched reads the central database');
  for (const [parent, other] of [[TenantPerson, 'central'], [CentralPerson, "tenant's"]]) {
    await assert.rejects(runWithTenant('b', () => parent.query().withGraphJoined('twin')), (e) => e instanceof TypeError && e.message.includes(other), parent.name + ' withGraphJoined');
    await assert.rejects(runWithTenant('b', () => parent.query().joinRelated('twin')), TypeError, parent.name + ' joinRelated');
  }
  await central.destroy();
  await tenancy.destroy();
  console.log('cjs ok');
})().catch((e) => { console.error(e); process.exit(1); });
`;

const ESM_SMOKE = `${COMMON}
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { createTenancy, TenantModel, currentTenantId, TenantError } from 'objection-tenancy';
const cjs = createRequire(import.meta.url)('objection-tenancy');
class Person extends TenantModel { static get tableName() { return 'persons'; } }
const tenancy = createTenancy({ knexConfig: config });
const names = await tenancy.runWithTenant('b', async () => {
  assert.equal(cjs.currentTenantId(), 'b', 'require() sees the scope opened through import');
  return (await Person.query()).map((p) => p.name);
});
assert.deepEqual(names, ['b-person']);
await cjs.runWithTenant('a', async () => assert.equal(currentTenantId(), 'a', 'import sees the scope opened through require()'));
assert.equal(cjs.TenantError, TenantError, 'one module instance behind both entry points');
await tenancy.destroy();
console.log('esm ok');
`;

describe('packed tarball in a scratch app', { skip: skipMysql }, () => {
  let app: string;

  before(async () => {
    for (const id of ['a', 'b']) {
      await backend.createDatabase(id);
    }
    const admin = (await import('knex')).default({ client: 'mysql2', connection: mysqlConnection() });
    for (const id of ['a', 'b']) {
      await admin.raw(`create table ot_pack_${id}.persons (id int primary key auto_increment, name varchar(50))`);
      await admin.raw(`insert into ot_pack_${id}.persons (name) values (?)`, [`${id}-person`]);
    }
    await admin.destroy();

    app = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-scratch-'));
    const out = execFileSync('npm', ['pack', '--silent', '--pack-destination', app], { cwd: root, encoding: 'utf8' });
    const tarball = path.join(app, out.trim().split('\n').pop()!);
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'scratch', private: true }));
    const versions = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).devDependencies;
    execFileSync(
      'npm',
      ['install', '--no-audit', '--no-fund', '--prefer-offline', '--silent', tarball, `knex@${versions.knex}`, `objection@${versions.objection}`, `mysql2@${versions.mysql2}`],
      { cwd: app, stdio: 'inherit' },
    );
    fs.cpSync(path.join(app, 'node_modules/objection-tenancy'), path.join(app, 'node_modules/objection-tenancy-copy'), { recursive: true });
    fs.writeFileSync(path.join(app, 'smoke.cjs'), CJS_SMOKE);
    fs.writeFileSync(path.join(app, 'smoke.mjs'), ESM_SMOKE);
  });

  after(async () => {
    for (const id of ['a', 'b']) await backend.dropDatabase(id);
    await backend.close();
    if (app) fs.rmSync(app, { recursive: true, force: true });
  });

  it('ships only dist, the README and package.json, with type declarations', () => {
    const files = execFileSync('tar', ['-tzf', fs.readdirSync(app).map((f) => path.join(app, f)).find((f) => f.endsWith('.tgz'))!], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map((f) => f.replace(/^package\//, ''));
    assert.ok(files.includes('dist/index.js') && files.includes('dist/index.mjs') && files.includes('dist/index.d.ts'));
    assert.ok(files.includes('README.md') && files.includes('package.json'));
    assert.deepEqual(files.filter((f) => !f.startsWith('dist/') && !['README.md', 'package.json', 'LICENSE'].includes(f)), []);
  });

  it('works through require(), and a second copy of the package shares the scope and refuses a join between its central model and a tenant model of the first', () => {
    assert.match(execFileSync(process.execPath, ['smoke.cjs'], { cwd: app, encoding: 'utf8' }), /cjs ok/);
  });

  it('works through import, and require() and import see each other’s scopes', () => {
    assert.match(execFileSync(process.execPath, ['smoke.mjs'], { cwd: app, encoding: 'utf8' }), /esm ok/);
  });

  it('gives TypeScript the types of the entry point it resolves: ESM importers see no default export, which index.mjs has none of', () => {
    // Named imports type-check from ESM and CommonJS; a default import from ESM must not, or it
    // compiles and then fails at run time ("does not provide an export named 'default'").
    fs.writeFileSync(
      path.join(app, 'named.mts'),
      "import { createTenancy, TenantModel, type SharedServerStats } from 'objection-tenancy';\nexport const made: unknown[] = [createTenancy, TenantModel];\nexport const full: SharedServerStats['serverFull'] = 0;\n",
    );
    fs.writeFileSync(path.join(app, 'named.cts'), "import ot = require('objection-tenancy');\nexport const made: unknown = ot.createTenancy;\n");
    fs.writeFileSync(path.join(app, 'default.mts'), "import ot from 'objection-tenancy';\nexport const made: unknown = ot.createTenancy;\n");
    const tsc = (file: string): { status: number | null; out: string } => {
      const run = spawnSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', file], { cwd: app, encoding: 'utf8' });
      return { status: run.status, out: `${run.stdout}${run.stderr}` };
    };
    for (const file of ['named.mts', 'named.cts']) assert.deepEqual(tsc(file), { status: 0, out: '' }, file);
    const wrong = tsc('default.mts');
    assert.equal(wrong.status, 2, wrong.out);
    assert.match(wrong.out, /TS1192|has no default export/);
    assert.throws(() => execFileSync(process.execPath, ['--input-type=module', '-e', "import ot from 'objection-tenancy';"], { cwd: app, stdio: 'pipe' }), /export named 'default'/);
  });
});
