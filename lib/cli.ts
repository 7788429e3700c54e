#!/usr/bin/env node
/**
 * `objection-tenancy migrate|rollback|status|create|drop|run`: operates every tenant of the tenancy a
 * config module exports. See `objection-tenancy --help` and the README section "Operating every tenant".
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseCliArgs, USAGE, UsageError, type CliArgs } from './cli-args';
import { createProgress, errorMessage, errorToJson, printableId, summarize, toJson, type ProgressStream } from './cli-output';
import type { Tenancy } from './tenancy';
import type { TenantResult, TenantsReport } from './tenant-runner';

/** What a config module gives the CLI. */
interface CliConfig {
  tenancy: Tenancy;
  listTenants?: () => readonly string[] | Promise<readonly string[]>;
  close?: () => unknown;
}

/** Where the CLI writes: stdout gets results, stderr progress and errors. */
export interface CliIo {
  stdout: { write(text: string): unknown };
  stderr: ProgressStream;
}

const EXIT = { ok: 0, failed: 1, usage: 2, interrupted: 130 } as const;

// tsc compiles `import()` to `require()` in a CommonJS build; ESM configs need a real dynamic import.
const importEsm = new Function('specifier', 'return import(specifier)') as (specifier: string) => Promise<unknown>;

/**
 * What require() throws for an ES module that import() loads: ERR_REQUIRE_ESM where require(esm) is
 * off (Node < 20.19, < 22.12), ERR_REQUIRE_ASYNC_MODULE where it is on and the module graph has a
 * top-level await (https://nodejs.org/api/modules.html#loading-ecmascript-modules-using-require).
 * Both come before any module of the graph runs (checked on Node 20.20), so import() runs it once.
 * Not ERR_REQUIRE_CYCLE_MODULE: it comes from inside a module already running (one that requires an
 * ES module of its own import cycle); import() fails the same way, after running the side effects again.
 */
const IMPORT_INSTEAD = new Set(['ERR_REQUIRE_ESM', 'ERR_REQUIRE_ASYNC_MODULE']);

/** Loads the config or a job module; one missing, or failing as it loads, is a usage error (exit 2). */
async function loadModule(file: string, what: string): Promise<Record<string, unknown>> {
  const resolved = path.resolve(file);
  if (!fs.existsSync(resolved)) throw new UsageError(`${what} not found: ${resolved}`);
  try {
    return await importOrRequire(resolved);
  } catch (error) {
    throw new UsageError(`${file} could not be loaded: ${(error as Error)?.message ?? String(error)}`, { cause: error });
  }
}

async function importOrRequire(resolved: string): Promise<Record<string, unknown>> {
  if (resolved.endsWith('.mjs')) return (await importEsm(pathToFileURL(resolved).href)) as Record<string, unknown>;
  try {
    return require(resolved) as Record<string, unknown>;
  } catch (error) {
    if (!IMPORT_INSTEAD.has((error as NodeJS.ErrnoException)?.code as string)) throw error;
    return (await importEsm(pathToFileURL(resolved).href)) as Record<string, unknown>;
  }
}

function isTenancy(value: unknown): value is Tenancy {
  const candidate = value as Partial<Tenancy> | null | undefined;
  return typeof candidate?.forEachTenant === 'function' && typeof candidate.destroy === 'function';
}

async function loadConfig(file: string): Promise<CliConfig> {
  const mod = await loadModule(file, 'config');
  const def = mod.default as Record<string, unknown> | undefined;
  const tenancy = [mod.tenancy, def?.tenancy, def, mod].find(isTenancy);
  if (tenancy === undefined) {
    throw new UsageError(`${file} must export the tenancy: module.exports = { tenancy } (or export default tenancy)`);
  }
  const pick = <T>(name: string): T | undefined => (typeof mod[name] === 'function' ? mod[name] : typeof def?.[name] === 'function' ? def[name] : undefined) as T | undefined;
  return { tenancy, listTenants: pick('listTenants'), close: pick('close') };
}

async function loadJob(file: string): Promise<(tenantId: string) => unknown> {
  const mod = await loadModule(file, 'job module');
  const fn = typeof mod === 'function' ? mod : typeof mod.default === 'function' ? mod.default : mod.run;
  if (typeof fn !== 'function') throw new UsageError(`${file} must export a function (tenantId) => result (default export, run, or module.exports)`);
  return fn as (tenantId: string) => unknown;
}

async function runCommand(args: CliArgs, config: CliConfig, io: CliIo, signal: AbortSignal): Promise<{ output: unknown; text: string; ok: boolean }> {
  const { tenancy } = config;
  if (args.command === 'create' || args.command === 'drop') {
    const id = args.target!;
    const result =
      args.command === 'create'
        ? await tenancy.createTenant(id, { seed: args.seed })
        : await tenancy.dropTenant(id, { confirm: args.confirm ?? '' });
    const what = args.command === 'create' ? 'created' : 'dropped';
    return { output: { ok: true, ...result }, text: `tenant ${printableId(result.tenantId)} ${what} in ${result.durationMs} ms\n`, ok: true };
  }
  // Every id on the command line is checked first: a mistyped list touches no tenant (exit 2).
  for (const id of args.tenants ?? []) tenancy.checkTenantId(id);
  const tenants = args.tenants ?? (config.listTenants === undefined ? undefined : tenantList(await listed(() => config.listTenants!())));
  const progress = createProgress(io.stderr, args.command);
  const common = { tenants, concurrency: args.concurrency, signal, onResult: progress.onResult };
  let report: TenantsReport<TenantResult>;
  try {
    if (args.command === 'run') {
      const job = await loadJob(args.target!);
      report = await tenancy.forEachTenant((id) => job(id), common);
    } else {
      const migrate = tenancy.migrate;
      report =
        args.command === 'migrate' ? await migrate.latest(common) : args.command === 'rollback' ? await migrate.rollback({ ...common, all: args.all, to: args.to }) : await migrate.status(common);
    }
  } finally {
    progress.finish();
  }
  return { output: report, text: summarize(args.command, report), ok: report.ok };
}

/**
 * Runs the CLI and resolves to its exit code: 0 done, 1 a tenant or the operation failed, 2 usage or
 * configuration error, 130 interrupted. Always destroys the tenancy (and calls the config's `close()`).
 */
export async function main(argv: readonly string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  let args: CliArgs | 'help';
  try {
    args = parseCliArgs(argv);
  } catch (error) {
    io.stderr.write(`objection-tenancy: ${(error as Error).message}\n\n${USAGE}\n`);
    return EXIT.usage;
  }
  if (args === 'help') {
    io.stdout.write(`${USAGE}\n`);
    return EXIT.ok;
  }
  if (args.command === 'drop' && args.confirm === undefined) {
    const id = printableId(args.target!);
    io.stderr.write(`objection-tenancy: drop deletes the database of tenant ${id}: pass --confirm ${id} (or --yes)\n`);
    return EXIT.usage;
  }
  const controller = new AbortController();
  let interrupts = 0;
  const onSigint = (): void => {
    interrupts++;
    if (interrupts > 1) {
      io.stderr.write('\nobjection-tenancy: second Ctrl-C, quitting now; a migration in progress may be cut half-way\n');
      process.exit(EXIT.interrupted);
    }
    io.stderr.write('\nobjection-tenancy: Ctrl-C: finishing the tenants in progress, starting no new one (Ctrl-C again to quit now)\n');
    controller.abort();
  };
  process.on('SIGINT', onSigint);
  let config: CliConfig | undefined;
  try {
    config = await loadConfig(args.config);
    const { output, text, ok } = await runCommand(args, config, io, controller.signal);
    io.stdout.write(args.json ? `${toJson(output)}\n` : text);
    return interrupts > 0 ? EXIT.interrupted : ok ? EXIT.ok : EXIT.failed;
  } catch (error) {
    const code = (error as { code?: unknown } | null | undefined)?.code;
    // A tenant id on the command line that fails validation is a usage error too.
    const usage = error instanceof UsageError || error instanceof TypeError || code === 'TENANT_DROP_NOT_CONFIRMED' || code === 'TENANT_ID_INVALID';
    if (args.json) io.stdout.write(`${toJson({ ok: false, error: errorToJson(error) })}\n`);
    io.stderr.write(`objection-tenancy: ${errorMessage(error)}\n`);
    return interrupts > 0 ? EXIT.interrupted : usage ? EXIT.usage : EXIT.failed;
  } finally {
    process.off('SIGINT', onSigint);
    await config?.tenancy.destroy().catch(() => undefined);
    // A close() that throws at once is caught too: it must not turn the run's exit code into 1.
    await Promise.resolve()
      .then(() => config?.close?.())
      .catch(() => undefined);
  }
}

/**
 * Calls the config's `listTenants()`. Its failure (a catalog that cannot be reached: fetch's
 * `TypeError: fetch failed`) is the operation's, exit 1 to retry, not a usage error (exit 2).
 */
async function listed(listTenants: () => unknown): Promise<unknown> {
  try {
    return await listTenants();
  } catch (error) {
    throw new Error(`the config's listTenants() failed: ${errorMessage(error)}`, { cause: error });
  }
}

/** The config's `listTenants()` result: an array, or another iterable of ids (a Set); a string would be spread into its characters. */
function tenantList(listed: unknown): readonly string[] {
  if (Array.isArray(listed)) return listed;
  if (listed != null && typeof listed !== 'string' && typeof (listed as Iterable<string>)[Symbol.iterator] === 'function') return [...(listed as Iterable<string>)];
  throw new UsageError(`the config's listTenants() must return an array of tenant ids (or a promise of one), got ${typeof listed === 'string' ? 'a string' : typeof listed}`);
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
    // Everything the CLI opened is closed; a handle the config left open must not hang a deploy.
    setTimeout(() => {
      process.stderr.write('objection-tenancy: something in the config keeps the process alive; export close() to release it\n');
      process.exit(code);
    }, 3000).unref();
  });
}
