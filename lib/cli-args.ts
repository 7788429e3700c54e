/**
 * Command line of `objection-tenancy`: the commands, their options, and the usage text. Parsed with
 * Node's own `util.parseArgs` (no dependency).
 */
import { parseArgs } from 'node:util';

/** The commands of the CLI. */
export type CliCommand = 'migrate' | 'rollback' | 'status' | 'create' | 'drop' | 'run';

/** The parsed command line. */
export interface CliArgs {
  command: CliCommand;
  /** The tenant id of `create` / `drop`, the module of `run`. */
  target?: string | undefined;
  config: string;
  tenants?: string[] | undefined;
  concurrency?: number | undefined;
  json: boolean;
  all: boolean;
  /** rollback: undo every applied migration after this file, on every tenant. */
  to?: string | undefined;
  seed: boolean;
  confirm?: string | undefined;
}

/** A wrong command line or config: exit code 2, with the usage text. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The text of `objection-tenancy --help`. */
export const USAGE = `Usage: objection-tenancy <command> [options]

Commands:
  migrate                apply pending migrations on every tenant
  rollback [--all | --to <file>]
                         roll back each tenant's last batch (or every migration, or every
                         migration after <file>, the same files on every tenant)
  status                 list applied and pending migrations per tenant (writes nothing)
  create <tenant>        create a tenant's database, migrate, seed (unless --no-seed) and register it
  drop <tenant>          drop a tenant's database and unregister it: needs --confirm <tenant> or --yes
  run <module>           run the function the module exports (default, run or module.exports)
                         as fn(tenantId) inside every tenant's scope

Options:
  --config <file>        module exporting { tenancy } and optionally listTenants() and close()
                         (default: ./tenancy.config.js)
  --tenants <a,b,c>      only these tenants (default: listTenants)
  --concurrency <n>      tenants processed at once (default 4)
  --json                 print the report as JSON on stdout (progress stays on stderr)
  -h, --help             show this text

Exit codes: 0 done, 1 a tenant or the operation failed, 2 usage or configuration error,
130 interrupted. Ctrl-C lets the tenants in progress finish and starts no new one; press it
again to quit at once (a migration may then be cut half-way).`;

const COMMANDS = new Set<CliCommand>(['migrate', 'rollback', 'status', 'create', 'drop', 'run']);
const TARGET_OF: Partial<Record<CliCommand, string>> = { create: 'a tenant id', drop: 'a tenant id', run: 'a module path' };

/**
 * Parses `argv` (without `node` and the script).
 * @returns `'help'` for `--help`, else the arguments.
 * @throws {UsageError} for an unknown command or option, or a missing or malformed value.
 */
export function parseCliArgs(argv: readonly string[]): CliArgs | 'help' {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help === true) return 'help';
  const [command, target, ...extra] = positionals;
  if (command === undefined) throw new UsageError('no command given');
  if (!COMMANDS.has(command as CliCommand)) throw new UsageError(`unknown command "${command}"`);
  const cmd = command as CliCommand;
  const needs = TARGET_OF[cmd];
  if (needs !== undefined && target === undefined) throw new UsageError(`${cmd} needs ${needs}`);
  if ((needs === undefined && target !== undefined) || extra.length > 0) {
    throw new UsageError(`unexpected argument "${needs === undefined ? target : extra[0]}"`);
  }
  let concurrency: number | undefined;
  if (values.concurrency !== undefined) {
    concurrency = Number(values.concurrency);
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new UsageError('--concurrency must be an integer >= 1');
  }
  let tenants: string[] | undefined;
  if (values.tenants !== undefined) {
    tenants = values.tenants.split(',').map((t) => t.trim()).filter((t) => t !== '');
    if (tenants.length === 0) throw new UsageError('--tenants needs at least one tenant id');
  }
  // create and drop act on their one tenant: a list or a concurrency would be silently ignored.
  if (needs !== undefined && cmd !== 'run' && (tenants !== undefined || concurrency !== undefined)) {
    throw new UsageError(`${tenants !== undefined ? '--tenants' : '--concurrency'} does not go with ${cmd} (it acts on the one tenant it names)`);
  }
  if (values['no-seed'] === true && cmd !== 'create') throw new UsageError('--no-seed only goes with create');
  if ((values.confirm !== undefined || values.yes === true) && cmd !== 'drop') throw new UsageError(`${values.confirm !== undefined ? '--confirm' : '--yes'} only goes with drop`);
  if (values.all === true && cmd !== 'rollback') throw new UsageError('--all only goes with rollback');
  if (values.to !== undefined && cmd !== 'rollback') throw new UsageError('--to only goes with rollback');
  if (values.to !== undefined && values.all === true) throw new UsageError('give --all or --to, not both');
  if (values.to === '') throw new UsageError('--to needs a migration file name');
  return {
    command: cmd,
    target,
    config: values.config ?? 'tenancy.config.js',
    tenants,
    concurrency,
    json: values.json === true,
    all: values.all === true,
    to: values.to,
    seed: values['no-seed'] !== true,
    confirm: values.confirm ?? (values.yes === true && cmd === 'drop' ? target : undefined),
  };
}

function parse(argv: readonly string[]) {
  return parseArgs({
    args: [...argv],
    allowPositionals: true,
    strict: true,
    options: {
      config: { type: 'string' },
      tenants: { type: 'string' },
      concurrency: { type: 'string' },
      json: { type: 'boolean' },
      all: { type: 'boolean' },
      to: { type: 'string' },
      'no-seed': { type: 'boolean' },
      confirm: { type: 'string' },
      yes: { type: 'boolean', short: 'y' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}
