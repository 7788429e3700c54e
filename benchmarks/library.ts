/**
 * The library as the benchmarks load it: its build (`dist/`, what `npm install` gives users, made by
 * `npm run build`), or with `BENCH_LIB=src` its TypeScript source through tsx, whose transform adds
 * a little of its own to every call (a `__name` call per closure it creates, among others). Every
 * benchmark loads it from here, so that models and tenancies come from one copy.
 */
import fs from 'node:fs';
import path from 'node:path';
import type * as Library from '../lib/index';

/** Where the library was loaded from: 'dist' or 'src' (printed with each benchmark's settings). */
export const librarySource: 'dist' | 'src' = process.env.BENCH_LIB === 'src' ? 'src' : 'dist';

function load(): typeof Library {
  if (librarySource === 'src') return require('../lib/index') as typeof Library;
  const entry = path.join(__dirname, '..', 'dist', 'index.js');
  if (!fs.existsSync(entry)) throw new Error(`benchmarks: ${entry} is missing: run \`npm run build\` first (or BENCH_LIB=src to load the source)`);
  return require(entry) as typeof Library;
}

export const library = load();
export const { createTenancy, TenantModel } = library;
