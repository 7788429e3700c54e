/**
 * A private MariaDB server that a script may stop and start again, for fault injection: its own data
 * directory, port, socket and pid, started as a child of this process and stopped by that child's pid.
 * Modelled on test/helpers/second-server.ts (which reuses a server it finds and cannot restart one).
 * It refuses the system server's port and any port something already listens on, so it can never
 * stop a server it did not start.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import mysql from 'mysql2/promise';

const SYSTEM_PORT = 3306;

export interface PrivateMariaDb {
  readonly port: number;
  /** The data directory (kept across stop/start, removed by `destroy()`). */
  readonly dir: string;
  /** The pid of the running server, or `undefined` while it is stopped. */
  pid(): number | undefined;
  /**
   * Stops the server: `SIGTERM` is a clean shutdown, `SIGKILL` a crash. Resolves once the process
   * has exited. Only ever signals the child this module started.
   */
  stop(signal?: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  /** Starts the server again on the same data directory; resolves once it answers queries. */
  start(): Promise<void>;
  /**
   * Freezes the running server (SIGSTOP): it keeps its sockets and accepts connections (the kernel
   * does) but answers nothing, as a hung server or one cut off by a network fault that sends no
   * reset. `thaw()` (SIGCONT) lets it go on where it stopped.
   */
  freeze(): void;
  thaw(): void;
  /** Stops the server (if running) and removes its data directory. */
  destroy(): Promise<void>;
}

/** Whether something listens on 127.0.0.1:`port` (a server we must not touch). */
function portTaken(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(true));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(false)));
  });
}

/** A free port chosen by the OS. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

async function answers(port: number): Promise<boolean> {
  try {
    const conn = await mysql.createConnection({ host: '127.0.0.1', port, user: 'root', password: '', connectTimeout: 1_000 });
    await conn.query('select 1');
    await conn.end();
    return true;
  } catch {
    return false;
  }
}

/**
 * Initialises a fresh data directory and starts a server on it. `port` defaults to
 * `FAULTS_MARIADB_PORT` or 3308; when that port is taken, an OS-chosen free port is used instead.
 * @throws {Error} when asked for the system server's port, or when the server does not come up.
 */
export async function startPrivateMariaDb(options: { port?: number; label?: string } = {}): Promise<PrivateMariaDb> {
  const wanted = options.port ?? Number(process.env.FAULTS_MARIADB_PORT ?? 3308);
  if (wanted === SYSTEM_PORT) throw new Error(`startPrivateMariaDb: port ${SYSTEM_PORT} is the system server's; pick another (FAULTS_MARIADB_PORT)`);
  const port = (await portTaken(wanted)) ? await freePort() : wanted;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `ot-${options.label ?? 'private'}-mariadb-`));
  const datadir = path.join(dir, 'data');
  const logFile = path.join(dir, 'error.log');
  execFileSync(
    'mariadb-install-db',
    ['--no-defaults', `--datadir=${datadir}`, '--user=root', '--auth-root-authentication-method=normal', '--skip-test-db'],
    { stdio: 'ignore' },
  );

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  // Never outlive this process, however it ends, nor leave its data directory behind.
  const killChild = () => {
    child?.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', killChild);

  const spawnServer = async (): Promise<void> => {
    if (await portTaken(port)) throw new Error(`port ${port} was taken while the private server was down`);
    const proc = spawn(
      '/usr/sbin/mariadbd',
      [
        '--no-defaults',
        `--datadir=${datadir}`,
        `--port=${port}`,
        `--socket=${path.join(dir, 'mariadb.sock')}`,
        `--pid-file=${path.join(dir, 'mariadb.pid')}`,
        `--log-error=${logFile}`,
        '--user=root',
        '--bind-address=127.0.0.1',
        '--skip-log-bin',
        '--innodb-buffer-pool-size=64M',
        '--max-connections=200',
      ],
      { stdio: 'ignore' },
    );
    child = proc;
    exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    // The script's own lifetime decides; a running server must not keep it alive.
    proc.unref();
    for (let i = 0; i < 150; i++) {
      if (await answers(port)) return;
      if (proc.exitCode !== null || proc.signalCode !== null) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    proc.kill('SIGKILL');
    await exited;
    child = undefined;
    const log = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n').slice(-15).join('\n') : '(no log)';
    throw new Error(`the private MariaDB server did not start on port ${port} (data directory ${dir}):\n${log}`);
  };

  const stop = async (signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> => {
    const proc = child;
    if (proc === undefined) return;
    // Referenced again while we wait for the exit, or an otherwise idle script would end right here.
    proc.ref();
    proc.kill(signal);
    await exited;
    child = undefined;
  };

  await spawnServer();
  return {
    port,
    dir,
    pid: () => child?.pid,
    stop,
    start: async () => {
      if (child !== undefined) return;
      await spawnServer();
    },
    freeze: () => void child?.kill('SIGSTOP'),
    thaw: () => void child?.kill('SIGCONT'),
    destroy: async () => {
      // A frozen server would not act on SIGTERM.
      child?.kill('SIGCONT');
      await stop('SIGTERM');
      process.off('exit', killChild);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
