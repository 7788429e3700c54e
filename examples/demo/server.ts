/**
 * Entry of `npm run demo`. Environment: PORT (default 3000), DATA_DIR (SQLite files, default
 * examples/demo/data), MYSQL_URL (use MariaDB databases demo_acme and demo_globex instead), DEMO_STRATEGY
 * (with MYSQL_URL: `shared` for one pool switched between the tenant databases).
 */
import { start } from './app';

function strategyFromEnv(value: string | undefined): 'pool-per-tenant' | 'shared' | undefined {
  if (value === undefined || value === '') return undefined;
  if (value === 'shared' || value === 'pool-per-tenant') return value;
  throw new TypeError(`DEMO_STRATEGY must be 'shared' or 'pool-per-tenant', not "${value}"`);
}

async function main(): Promise<void> {
  const demo = await start({
    port: process.env.PORT === undefined ? 3000 : Number(process.env.PORT),
    dataDir: process.env.DATA_DIR || undefined,
    mysqlUrl: process.env.MYSQL_URL || undefined,
    strategy: strategyFromEnv(process.env.DEMO_STRATEGY),
  });
  const base = `http://localhost:${demo.port}`;
  console.log(`objection-tenancy demo on ${base} (${demo.databases.description}, strategy ${demo.tenancy.stats().strategy}), tenants: acme, globex

  curl -H 'x-tenant-id: acme' ${base}/people
  curl -H 'x-tenant-id: globex' ${base}/people
  curl -H 'x-tenant-id: acme' -H 'content-type: application/json' -d '{"name":"Linus Torvalds"}' ${base}/people
  curl -H 'x-tenant-id: acme' ${base}/people/1/pets
  curl -i -H 'x-tenant-id: initech' ${base}/people     # unknown tenant: 404
  curl -i ${base}/people                               # no tenant header: 400
  curl ${base}/health
`);

  let signals = 0;
  const shutdown = (signal: NodeJS.Signals) => {
    if (++signals > 1) process.exit(1); // a second Ctrl-C does not wait
    console.log(`${signal}: closing the server and the tenant pools...`);
    demo.stop().then(
      () => console.log('bye'),
      (error: unknown) => {
        console.error(error);
        process.exitCode = 1;
      },
    );
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
