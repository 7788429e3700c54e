/**
 * The Redis the BullMQ suites run against. Under CI=true an unreachable Redis fails the run; locally
 * the BullMQ suites skip with a loud notice.
 */
import { spawnSync } from 'node:child_process';

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

function probeRedis(): string | undefined {
  const script = `const Redis = require('ioredis');
    const r = new Redis(process.argv[1], { lazyConnect: true, connectTimeout: 3000, maxRetriesPerRequest: 0, retryStrategy: () => null });
    let cause;
    r.on('error', (e) => { cause ??= e; });
    r.connect().then(() => r.ping()).then(() => { r.disconnect(); process.exit(0); },
      (e) => { e = cause || e; console.error(e.code || e.message); process.exit(1); });`;
  const result = spawnSync(process.execPath, ['-e', script, REDIS_URL], { encoding: 'utf8', timeout: 15_000 });
  return result.status === 0 ? undefined : (result.stderr.trim() || 'no answer');
}

const redisProblem = probeRedis();
if (redisProblem !== undefined) {
  if (process.env.CI === 'true') {
    throw new Error(`Redis at ${new URL(REDIS_URL).host} is unreachable (${redisProblem}); under CI=true the BullMQ suites must run.`);
  }
  console.error(`\n!!! Redis at ${new URL(REDIS_URL).host} is unreachable (${redisProblem}): BullMQ-backed tests are SKIPPED.\n`);
}

/** `undefined` when Redis is up, else the reason to skip (never under CI=true, which throws above). */
export const skipRedis: string | undefined = redisProblem === undefined ? undefined : `Redis unreachable: ${redisProblem}`;

/** BullMQ connection options for REDIS_URL (BullMQ opens and closes its own connections from these). */
export function redisConnection(): { host: string; port: number; password?: string; db?: number; maxRetriesPerRequest: null } {
  const url = new URL(REDIS_URL);
  const options: { host: string; port: number; password?: string; db?: number; maxRetriesPerRequest: null } = {
    host: url.hostname,
    port: Number(url.port || 6379),
    maxRetriesPerRequest: null,
  };
  if (url.password) options.password = decodeURIComponent(url.password);
  if (url.pathname.length > 1) options.db = Number(url.pathname.slice(1));
  return options;
}

/** A queue name no other run or test shares. */
export function uniqueQueueName(label: string): string {
  return `ot-${label}-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}
