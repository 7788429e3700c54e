/**
 * A second MariaDB server for multi-server tests, on 127.0.0.1:3307. Reused when one already answers
 * there (CI may start it); otherwise initialised in a temporary data directory, started, and stopped
 * by its pid when the suite ends.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import knexFactory from 'knex';

export const SECOND_PORT = Number(process.env.MYSQL_SECOND_PORT ?? 3307);

async function answers(port: number): Promise<boolean> {
  const knex = knexFactory({ client: 'mysql2', connection: { host: '127.0.0.1', port, user: 'root', password: '' }, pool: { min: 0, max: 1 }, acquireConnectionTimeout: 2_000, log: { warn() {} } });
  try {
    await knex.raw('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await knex.destroy();
  }
}

export interface SecondServer {
  port: number;
  stop(): Promise<void>;
}

/** Starts (or reuses) the second server. Fails, never skips, when it cannot be started. */
export async function startSecondServer(): Promise<SecondServer> {
  if (await answers(SECOND_PORT)) return { port: SECOND_PORT, stop: async () => undefined };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-mariadb2-'));
  const datadir = path.join(dir, 'data');
  execFileSync('mariadb-install-db', ['--no-defaults', `--datadir=${datadir}`, '--user=root', '--auth-root-authentication-method=normal', '--skip-test-db'], { stdio: 'ignore' });
  const child: ChildProcess = spawn(
    '/usr/sbin/mariadbd',
    [
      '--no-defaults',
      `--datadir=${datadir}`,
      `--port=${SECOND_PORT}`,
      `--socket=${path.join(dir, 'mariadb.sock')}`,
      `--pid-file=${path.join(dir, 'mariadb.pid')}`,
      '--user=root',
      '--bind-address=127.0.0.1',
      '--skip-log-bin',
      '--innodb-buffer-pool-size=64M',
    ],
    { stdio: 'ignore' },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // Never keep the test process alive, and never outlive it.
  child.unref();
  process.once('exit', () => child.kill('SIGKILL'));
  for (let i = 0; i < 100; i++) {
    if (await answers(SECOND_PORT)) {
      return {
        port: SECOND_PORT,
        stop: async () => {
          child.ref();
          child.kill('SIGTERM');
          await exited;
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  child.kill('SIGKILL');
  throw new Error(`the second MariaDB server did not start on port ${SECOND_PORT} (data directory ${dir})`);
}
