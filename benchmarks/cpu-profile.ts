/**
 * BENCH_CPU_PROFILE=DIR: a V8 CPU profile (sampled every 250 µs) of this process over each measured window only (no set-up,
 * no warm-up), written as DIR/<variant>-<popularity>-<n>.cpuprofile with a .json beside it holding the queries it served,
 * so that profiles of two variants compare per query. `node --cpu-prof` profiles the whole process,
 * set-up included (the shared variant opens every tenant first: 10,000 checks that land in its
 * profile and not in the others').
 */
import fs from 'node:fs';
import path from 'node:path';
import { Session } from 'node:inspector/promises';

const DIR = process.env.BENCH_CPU_PROFILE;
const runs = new Map<string, number>();

/** Runs `measure` under the profiler when BENCH_CPU_PROFILE is set; `queries` reads what it served. */
export async function profiled<T>(cell: string, measure: () => Promise<T>, queries: (result: T) => number): Promise<T> {
  if (DIR === undefined || DIR === '') return measure();
  const run = (runs.get(cell) ?? 0) + 1;
  runs.set(cell, run);
  const name = `${cell}-${run}`;
  const session = new Session();
  session.connect();
  try {
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 250 });
    await session.post('Profiler.start');
    const result = await measure();
    const { profile } = await session.post('Profiler.stop');
    fs.mkdirSync(DIR, { recursive: true });
    fs.writeFileSync(path.join(DIR, `${name}.cpuprofile`), JSON.stringify(profile));
    fs.writeFileSync(path.join(DIR, `${name}.json`), JSON.stringify({ name, queries: queries(result) }));
    return result;
  } finally {
    session.disconnect();
  }
}
