/**
 * Compares two CPU profiles written by BENCH_CPU_PROFILE (see cpu-profile.ts) per query served:
 * self time by package, then the functions whose self time differs most.
 *
 *   node --import tsx benchmarks/profile-diff.ts DIR/shared-zipf-1.cpuprofile DIR/orm-qualified-zipf-1.cpuprofile
 *
 * Env: TOP (40) functions listed. Times are µs of this process's CPU (samples) per query.
 */
import fs from 'node:fs';

interface CallFrame { functionName: string; url: string; lineNumber: number }
interface Profile { nodes: { id: number; callFrame: CallFrame }[]; samples: number[]; timeDeltas: number[] }

function packageOf(url: string): string {
  if (url === '') return '(vm: native, gc, idle)';
  const module = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (module !== null) return module[1]!;
  if (url.includes('/dist/')) return 'objection-tenancy (dist)';
  if (url.includes('/lib/')) return 'objection-tenancy (lib)';
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/')[0]}`;
  if (url.includes('/benchmarks/')) return 'benchmark';
  return url;
}

/** Self time per function and per package, in µs per query. */
function perQuery(file: string): { functions: Map<string, number>; packages: Map<string, number> } {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  const { queries } = JSON.parse(fs.readFileSync(file.replace(/\.cpuprofile$/, '.json'), 'utf8')) as { queries: number };
  const frames = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));
  const functions = new Map<string, number>();
  const packages = new Map<string, number>();
  const add = (map: Map<string, number>, key: string, us: number) => map.set(key, (map.get(key) ?? 0) + us / queries);
  profile.samples.forEach((id, i) => {
    const frame = frames.get(id)!;
    const us = profile.timeDeltas[i] ?? 0;
    add(functions, `${frame.functionName || '(anonymous)'} ${frame.url.split('/').slice(-2).join('/')}:${frame.lineNumber + 1}`, us);
    add(packages, packageOf(frame.url), us);
  });
  return { functions, packages };
}

function table(title: string, a: Map<string, number>, b: Map<string, number>, top: number): void {
  const rows = [...new Set([...a.keys(), ...b.keys()])].map((key) => ({ key, a: a.get(key) ?? 0, b: b.get(key) ?? 0 }));
  rows.sort((x, y) => Math.abs(y.a - y.b) - Math.abs(x.a - x.b));
  console.log(`\n${title}\n${'A'.padStart(8)} ${'B'.padStart(8)} ${'A-B'.padStart(8)}`);
  for (const row of rows.slice(0, top)) console.log(`${row.a.toFixed(2).padStart(8)} ${row.b.toFixed(2).padStart(8)} ${(row.a - row.b).toFixed(2).padStart(8)}  ${row.key}`);
}

const [fileA, fileB] = process.argv.slice(2);
if (fileA === undefined || fileB === undefined) {
  console.error('usage: profile-diff.ts A.cpuprofile B.cpuprofile');
  process.exit(2);
}
const a = perQuery(fileA);
const b = perQuery(fileB);
const sum = (map: Map<string, number>) => [...map.values()].reduce((x, y) => x + y, 0);
console.log(`A ${fileA}: ${sum(a.packages).toFixed(1)} µs per query\nB ${fileB}: ${sum(b.packages).toFixed(1)} µs per query`);
table('by package, µs per query', a.packages, b.packages, 20);
table('by function, µs per query (largest differences)', a.functions, b.functions, Number(process.env.TOP ?? 40));
