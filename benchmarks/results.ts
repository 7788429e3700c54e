/**
 * Where benchmark and soak results are recorded: `benchmarks/results/<name>.json`, one file per run
 * kind, with the date, the versions and the machine, in the shape scale.bench.ts writes.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const RESULTS_DIR = path.join(__dirname, 'results');

/** The installed version of a dependency. */
export function versionOf(name: string): string {
  return (require(`${name}/package.json`) as { version: string }).version;
}

/** `linux x64, 2 x <CPU model>`. */
export function machine(): string {
  const cpu = os.cpus();
  return `${os.platform()} ${os.arch()}, ${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown CPU'}`;
}

/** The 1, 5 and 15 minute load averages, as /proc/loadavg prints them. */
export function loadAverage(): string {
  return os.loadavg().map((n) => n.toFixed(2)).join(' ');
}

/**
 * Writes `benchmarks/results/<name>.json`: date, Node, MariaDB, knex, objection and mysql2 versions,
 * machine, the library's copy (`dist` or `src`), the load average before and after, the settings and the result. Returns the file path.
 */
export function writeResults(
  name: string,
  data: { mariadb: string; loadBefore: string; settings: Record<string, unknown>; result: Record<string, unknown>; [key: string]: unknown },
): string {
  const { mariadb, loadBefore, settings, result, ...extra } = data;
  const file = path.join(RESULTS_DIR, `${name}.json`);
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const record = {
    date: new Date().toISOString(),
    node: process.version,
    mariadb,
    knex: versionOf('knex'),
    objection: versionOf('objection'),
    mysql2: versionOf('mysql2'),
    machine: machine(),
    // Which copy of the library ran: its build (the default) or its source through tsx (benchmarks/library.ts).
    library: process.env.BENCH_LIB === 'src' ? 'src' : 'dist',
    load: { before: loadBefore, after: loadAverage() },
    settings,
    result,
    ...extra,
  };
  fs.writeFileSync(file, `${JSON.stringify(record, null, 2)}\n`);
  return file;
}

/** The median of `values` (the mean of the two middle ones for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * A distribution-free interval for the median of `values` (order statistics, binomial coverage):
 * the widest symmetric pair of order statistics whose coverage is at least 95%, or the range (and
 * its coverage, below 95%) when there are too few values. NaNs are left out.
 */
export function medianInterval(values: readonly number[]): { low: number; high: number; coverage: number } {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  const n = sorted.length;
  if (n === 0) return { low: Number.NaN, high: Number.NaN, coverage: 0 };
  // P(Binomial(n, 1/2) <= j), j = 0..n.
  const cdf: number[] = [];
  let term = 0.5 ** n;
  let total = 0;
  for (let j = 0; j <= n; j++) {
    total += term;
    cdf.push(total);
    term = (term * (n - j)) / (j + 1);
  }
  // The interval [x_(k), x_(n-k+1)] (1-based) covers the median with probability 1 - 2 P(X <= k-1).
  const coverage = (k: number): number => 1 - 2 * cdf[k - 1]!;
  let k = 1;
  while (k + 1 <= (n + 1) / 2 && coverage(k + 1) >= 0.95) k++;
  return { low: sorted[k - 1]!, high: sorted[n - k]!, coverage: coverage(k) };
}

/** A positive integer from the environment, or `fallback`. */
export function intEnv(name: string, fallback: number): number {
  const value = process.env[name];
  if (value === undefined || value === '') return fallback;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed <= 0) throw new TypeError(`${name} must be a positive integer`);
  return parsed;
}


/**
 * Runs this script again in a child process (same Node flags, `env` added) and resolves to the last
 * line it printed on stdout, parsed as JSON: one benchmark cell in a process of its own.
 */
export async function runSelfAsChild<T>(label: string, env: Record<string, string>): Promise<T> {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`${label}: the child process exited with ${code}`);
  return JSON.parse(out.trim().split('\n').pop()!) as T;
}
