/**
 * The ledger app of the soak and the fault runs, its HTTP client and its final check.
 *
 * Every tenant database has `persons(id, name, amount, ref)` and `tenant_info(tenant_id)`. Every row
 * is named `<tenant>-...` by the client that asked for it, so a row in the wrong database, or a
 * response holding another tenant's row, shows. Writes carry a unique `ref` and an `amount`: at the
 * end, the refs acknowledged to a tenant must all be in its database, refs rolled back on purpose must
 * not, and the sum of its amounts must equal the sum of the acknowledged amounts.
 */
import http from 'node:http';
import type { Knex } from 'knex';
import express, { type ErrorRequestHandler, type Request, type Response } from 'express';
import type { Model } from 'objection';
import { TenantModel, type TenantErrorHandler } from '../lib/index';
import { randomPause } from '../test/helpers/http';

export const SEED_ROWS = 10;

/** (Re)creates the ledger tables of one tenant and seeds `SEED_ROWS` rows of amount 0. */
export async function createLedgerSchema(knex: Knex, tenant: string): Promise<void> {
  await knex.schema.dropTableIfExists('persons');
  await knex.schema.dropTableIfExists('tenant_info');
  await knex.schema.createTable('tenant_info', (t) => {
    t.string('tenant_id').notNullable();
  });
  await knex.schema.createTable('persons', (t) => {
    t.increments('id').primary();
    t.string('name', 120).notNullable();
    t.integer('amount').notNullable().defaultTo(0);
    t.string('ref', 60).unique();
  });
  await knex('tenant_info').insert({ tenant_id: tenant });
  await knex('persons').insert(Array.from({ length: SEED_ROWS }, (_, i) => ({ name: `${tenant}-seed-${i + 1}`, amount: 0 })));
}

/** The tenant-aware model of the ledger app. */
export class LedgerPerson extends TenantModel {
  static override tableName = 'persons';
  declare id: number;
  declare name: string;
  declare amount: number;
  declare ref: string | null;
}

/** A model class as the app uses it: ours, or the deliberately broken one of the negative control. */
export type LedgerModelClass = typeof Model & { query(): any; knex(): Knex };

/** An error the app answers itself (bad input, a rollback on purpose). */
export class AppError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
  ) {
    super(code);
  }
}

export interface LedgerAppOptions {
  middleware: express.RequestHandler;
  Person: LedgerModelClass;
  /** Runs `fn` in a transaction of the current tenant; nested, a savepoint. */
  transaction<T>(fn: () => Promise<T>): Promise<T>;
  /** The tenancy's error handler (tenant and database errors: 400/404/503), mounted before the app's own. */
  errorHandler?: TenantErrorHandler;
  /** Sees every error the app answers 500 (not the tenancy's 503s). */
  onInternalError?(error: unknown, req: Request): void;
}

interface Entry {
  name: string;
  amount: number;
  ref: string;
}

function entryOf(value: unknown): Entry {
  const { name, amount, ref } = (value ?? {}) as Partial<Entry>;
  if (typeof name !== 'string' || typeof ref !== 'string' || !Number.isInteger(amount)) throw new AppError(400, 'BAD_ENTRY');
  return { name, amount: amount!, ref };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The app. Route code uses `Person` directly (no knex passed); random awaits between queries make
 * concurrent requests of different tenants interleave.
 */
export function ledgerApp(options: LedgerAppOptions): express.Express {
  const { Person, transaction } = options;
  const app = express();
  app.use(express.json());
  app.use(options.middleware);
  const route = (fn: (req: Request, res: Response) => Promise<void>) => (req: Request, res: Response, next: (error?: unknown) => void) => {
    fn(req, res).catch(next);
  };

  app.get('/people', route(async (req, res) => {
    const limit = Math.min(20, Math.max(1, Number(req.query.limit) || 5));
    await randomPause();
    if (req.query.slow !== undefined) await sleep(15);
    const rows = await Person.query().select('id', 'name', 'amount').orderBy('id', 'desc').limit(limit);
    await randomPause();
    res.json(rows);
  }));

  app.get('/people/:id', route(async (req, res) => {
    const id = Number(req.params.id);
    if (!Number.isInteger(id) || id < 1) throw new AppError(400, 'BAD_ID');
    await randomPause();
    const row = await Person.query().findById(id).select('id', 'name', 'amount');
    if (row === undefined) throw new AppError(404, 'NOT_FOUND');
    res.json(row);
  }));

  app.get('/balance', route(async (_req, res) => {
    await randomPause();
    const [info, sum] = await Promise.all([
      Person.knex()('tenant_info').first('tenant_id'),
      Person.query().sum('amount as total').first(),
    ]);
    await randomPause();
    res.json({ tenant: (info as { tenant_id: string }).tenant_id, total: Number((sum as unknown as { total: unknown }).total) });
  }));

  // Raw SQL naming no database (qualifyTables: refused on a clean connection, sent again after a switch).
  app.get('/raw', route(async (_req, res) => {
    const [rows] = await Person.knex().raw('select tenant_id from tenant_info limit 1');
    res.json({ tenant: (rows as { tenant_id: string }[])[0]!.tenant_id });
  }));

  // Session state: what the last request on this connection left in a user variable (null, or this
  // tenant's own when the connection stays with it), then claims it for this tenant.
  app.get('/session', route(async (_req, res) => {
    const knex = Person.knex();
    const [rows] = await knex.raw('select @ledger_owner as seen, (select tenant_id from tenant_info limit 1) as tenant');
    const { seen, tenant } = (rows as { seen: string | null; tenant: string }[])[0]!;
    await randomPause();
    await knex.raw('set @ledger_owner = ?', [tenant]);
    res.json({ tenant, seen });
  }));

  app.post('/people', route(async (req, res) => {
    const entry = entryOf(req.body);
    await randomPause();
    const row = await Person.query().insert(entry);
    await randomPause();
    res.status(201).json(row);
  }));

  // Entries written in one transaction; `savepoint` is written in a nested transaction that throws
  // (a savepoint rolled back, the outer one commits); `fail` throws after the writes (all rolled back).
  app.post('/people/tx', route(async (req, res) => {
    const body = (req.body ?? {}) as { entries?: unknown[]; savepoint?: unknown; fail?: boolean };
    const entries = (body.entries ?? []).map(entryOf);
    const savepoint = body.savepoint === undefined ? undefined : entryOf(body.savepoint);
    const rows = await transaction(async () => {
      const written: unknown[] = [];
      for (const entry of entries) {
        written.push(await Person.query().insert(entry));
        await randomPause();
      }
      if (savepoint !== undefined) {
        try {
          await transaction(async () => {
            await Person.query().insert(savepoint);
            await randomPause();
            throw new AppError(409, 'SAVEPOINT_ROLLED_BACK');
          });
        } catch (error) {
          if (!(error instanceof AppError)) throw error;
        }
      }
      if (body.fail === true) throw new AppError(409, 'ROLLED_BACK');
      return written;
    });
    res.status(201).json(rows);
  }));

  if (options.errorHandler !== undefined) app.use(options.errorHandler);
  const appErrors: ErrorRequestHandler = (error, req, res, _next) => {
    const known = error instanceof AppError;
    if (!known) options.onInternalError?.(error, req);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.status(known ? error.status : 500).json({ error: { code: known ? error.code : 'INTERNAL' } });
  };
  app.use(appErrors);
  return app;
}

/** What a request of the load asks for. */
export type RequestKind =
  | 'list' // GET /people: the last few rows
  | 'get' // GET /people/:id of a seeded row
  | 'balance' // GET /balance: tenant_info and the sum
  | 'getMissing' // GET /people/999999999: 404
  | 'getBad' // GET /people/abc: 400
  | 'write' // POST /people: one insert, 201
  | 'txWrite' // POST /people/tx: two inserts and a savepoint rolled back, 201
  | 'txFail' // POST /people/tx with fail: two inserts, then a throw: 409, all rolled back
  | 'abort' // GET /people?slow: the client hangs up after a few ms
  | 'unknownTenant' // a valid tenant id nobody has: 404
  | 'invalidTenant' // a malformed tenant id: 400
  | 'raw' // GET /raw: raw SQL that names no database
  | 'session'; // GET /session: a user variable left by another tenant is a leak (resetSession, or a pool per tenant)

/** The statuses a healthy app answers each kind with (0: the client aborted). */
export const EXPECTED: Readonly<Record<RequestKind, readonly number[]>> = {
  list: [200],
  get: [200],
  balance: [200],
  getMissing: [404],
  getBad: [400],
  write: [201],
  txWrite: [201],
  txFail: [409],
  abort: [0, 200],
  unknownTenant: [404],
  invalidTenant: [400],
  raw: [200],
  session: [200],
};

/** Picks a kind from weights. */
export function mix(weights: Partial<Record<RequestKind, number>>): () => RequestKind {
  const entries = Object.entries(weights).filter(([, w]) => w! > 0) as [RequestKind, number][];
  const total = entries.reduce((sum, [, w]) => sum + w, 0);
  return () => {
    let roll = Math.random() * total;
    for (const [kind, w] of entries) {
      roll -= w;
      if (roll < 0) return kind;
    }
    return entries[entries.length - 1]![0];
  };
}

/** One response, as the load saw it. */
export interface Outcome {
  kind: RequestKind;
  tenant: string;
  /** HTTP status; 0 when there was no response (aborted by the client, or a network error). */
  status: number;
  /** When it was sent and answered (ms, `performance.now()` clock). */
  sentAt: number;
  ms: number;
  /** Whether the status is one a healthy app answers this kind with (`EXPECTED`). */
  expected: boolean;
  retryAfter: string | undefined;
  /** The body of an unexpected answer (truncated). */
  body?: string;
  /** The response held a row (or tenant name) of another tenant. */
  leak: boolean;
}

interface TenantBook {
  /** Refs acknowledged (2xx) with their amounts. */
  acked: Map<string, number>;
  /** Refs whose rollback was acknowledged: they must not be in the database. */
  rolledBack: Set<string>;
  /** Refs of writes whose outcome the client cannot know (no answer, or a 5xx): either way is fine. */
  uncertain: Map<string, number>;
}

/**
 * The load's HTTP client: sends one request of a kind for a tenant, checks the response for other
 * tenants' rows, and books every write (acknowledged, rolled back, or uncertain) for `checkLedger()`.
 */
export class LedgerClient {
  readonly books = new Map<string, TenantBook>();
  readonly statuses = new Map<string, number>();
  readonly leakSamples: string[] = [];
  readonly unexpectedSamples: string[] = [];
  leaks = 0;
  unexpected = 0;
  requests = 0;
  readonly #agent: http.Agent;
  readonly #url: URL;
  readonly #label: string;
  #seq = 0;

  constructor(url: string, label: string, sockets: number) {
    this.#url = new URL(url);
    this.#label = label;
    this.#agent = new http.Agent({ keepAlive: true, maxSockets: sockets });
  }

  close(): void {
    this.#agent.destroy();
  }

  #book(tenant: string): TenantBook {
    let book = this.books.get(tenant);
    if (book === undefined) {
      book = { acked: new Map(), rolledBack: new Set(), uncertain: new Map() };
      this.books.set(tenant, book);
    }
    return book;
  }

  #entry(tenant: string): Entry {
    const ref = `${this.#label}-${++this.#seq}`;
    return { name: `${tenant}-${ref}`, amount: 1 + Math.floor(Math.random() * 999), ref };
  }

  async send(kind: RequestKind, tenant: string): Promise<Outcome> {
    this.requests++;
    let header = tenant;
    if (kind === 'unknownTenant') header = `nosuch${1 + Math.floor(Math.random() * 3)}`;
    if (kind === 'invalidTenant') header = 'not a tenant!';
    let method = 'GET';
    let path = '/people?limit=5';
    let payload: unknown;
    let writes: { ok: Entry[]; undone: Entry[] } | undefined;
    switch (kind) {
      case 'get':
        path = `/people/${1 + Math.floor(Math.random() * SEED_ROWS)}`;
        break;
      case 'session':
        path = '/session';
        break;
      case 'raw':
        path = '/raw';
        break;
      case 'balance':
        path = '/balance';
        break;
      case 'getMissing':
        path = '/people/999999999';
        break;
      case 'getBad':
        path = '/people/abc';
        break;
      case 'abort':
        path = '/people?slow=1';
        break;
      case 'write': {
        method = 'POST';
        path = '/people';
        const entry = this.#entry(tenant);
        payload = entry;
        writes = { ok: [entry], undone: [] };
        break;
      }
      case 'txWrite':
      case 'txFail': {
        method = 'POST';
        path = '/people/tx';
        const entries = [this.#entry(tenant), this.#entry(tenant)];
        const savepoint = this.#entry(tenant);
        const fail = kind === 'txFail';
        payload = { entries, savepoint, fail };
        writes = fail ? { ok: [], undone: [...entries, savepoint] } : { ok: entries, undone: [savepoint] };
        break;
      }
      default:
        break;
    }
    const sentAt = performance.now();
    const answer = await this.#call(method, path, header, payload, kind === 'abort' ? 1 + Math.random() * 9 : undefined);
    const outcome: Outcome = {
      kind,
      tenant,
      status: answer.status,
      sentAt,
      ms: performance.now() - sentAt,
      expected: EXPECTED[kind].includes(answer.status),
      retryAfter: answer.retryAfter,
      leak: false,
    };
    const key = `${kind} ${answer.status}`;
    this.statuses.set(key, (this.statuses.get(key) ?? 0) + 1);

    if (writes !== undefined) {
      const book = this.#book(tenant);
      if (answer.status === 201) {
        for (const e of writes.ok) book.acked.set(e.ref, e.amount);
        for (const e of writes.undone) book.rolledBack.add(e.ref);
      } else if (answer.status === 409 || (answer.status >= 400 && answer.status < 500)) {
        // Refused or rolled back on purpose: nothing of it may be in the database.
        for (const e of [...writes.ok, ...writes.undone]) book.rolledBack.add(e.ref);
      } else {
        for (const e of writes.ok) book.uncertain.set(e.ref, e.amount);
        for (const e of writes.undone) book.rolledBack.add(e.ref);
      }
    }
    if (answer.status === 200) outcome.leak = this.#holdsOtherTenant(kind, tenant, answer.text);
    if (outcome.leak) {
      this.leaks++;
      if (this.leakSamples.length < 5) this.leakSamples.push(`${kind} for ${tenant}: ${answer.text.slice(0, 200)}`);
    }
    if (!outcome.expected) {
      outcome.body = answer.text.slice(0, 300);
      this.unexpected++;
      if (this.unexpectedSamples.length < 8) this.unexpectedSamples.push(`${kind} ${tenant} -> ${answer.status} ${outcome.body}`);
    }
    return outcome;
  }

  #holdsOtherTenant(kind: RequestKind, tenant: string, text: string): boolean {
    if (kind === 'balance' || kind === 'raw') return (JSON.parse(text) as { tenant: string }).tenant !== tenant;
    if (kind === 'session') {
      const body = JSON.parse(text) as { tenant: string; seen: string | null };
      return body.tenant !== tenant || (body.seen !== null && body.seen !== tenant);
    }
    const body = JSON.parse(text) as { name: string } | { name: string }[];
    const rows = Array.isArray(body) ? body : [body];
    return rows.length === 0 || rows.some((row) => !row.name.startsWith(`${tenant}-`));
  }

  #call(
    method: string,
    path: string,
    tenant: string,
    payload: unknown,
    abortAfterMs: number | undefined,
  ): Promise<{ status: number; text: string; retryAfter: string | undefined }> {
    return new Promise((resolve) => {
      const body = payload === undefined ? undefined : JSON.stringify(payload);
      const headers: Record<string, string> = { 'x-tenant-id': tenant };
      if (body !== undefined) {
        headers['content-type'] = 'application/json';
        headers['content-length'] = String(Buffer.byteLength(body));
      }
      let timer: NodeJS.Timeout | undefined;
      const req = http.request(
        { host: this.#url.hostname, port: this.#url.port, method, path, headers, agent: this.#agent },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (text += chunk));
          res.on('end', () => {
            clearTimeout(timer);
            const retryAfter = res.headers['retry-after'];
            resolve({ status: res.statusCode ?? 0, text, retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined });
          });
          res.on('error', () => resolve({ status: 0, text: 'response error', retryAfter: undefined }));
        },
      );
      req.on('error', (error: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        resolve({ status: 0, text: error.code ?? error.message, retryAfter: undefined });
      });
      if (abortAfterMs !== undefined) timer = setTimeout(() => req.destroy(), abortAfterMs);
      req.end(body);
    });
  }
}

/** The database side of the check, for one tenant. */
export interface TenantCheck {
  tenant: string;
  ackedSum: number;
  dbSum: number;
  /** Acknowledged refs missing from the database. */
  lost: number;
  /** Rows of another tenant found in this tenant's database. */
  foreign: number;
  /** Rows that were rolled back (or refused) but are in the database. */
  phantom: number;
  /** Writes without an answer (or with a 5xx) that did land: allowed. */
  landedUncertain: number;
}

export interface LedgerCheck {
  tenants: TenantCheck[];
  lostWrites: number;
  foreignRows: number;
  phantomWrites: number;
  /** Tenants whose database sum differs from the acknowledged (plus landed uncertain) amounts. */
  sumMismatches: number;
  landedUncertain: number;
}

/**
 * Checks every tenant database against the client's books: `db(tenant)` queries that tenant's
 * database (a knex on it, not through the tenancy).
 */
export async function checkLedger(client: LedgerClient, tenants: readonly string[], db: (tenant: string) => Knex.QueryBuilder): Promise<LedgerCheck> {
  const result: LedgerCheck = { tenants: [], lostWrites: 0, foreignRows: 0, phantomWrites: 0, sumMismatches: 0, landedUncertain: 0 };
  for (const tenant of tenants) {
    const book = client.books.get(tenant) ?? { acked: new Map<string, number>(), rolledBack: new Set<string>(), uncertain: new Map<string, number>() };
    const rows = (await db(tenant).select('name', 'amount', 'ref')) as { name: string; amount: number; ref: string | null }[];
    const check: TenantCheck = { tenant, ackedSum: 0, dbSum: 0, lost: 0, foreign: 0, phantom: 0, landedUncertain: 0 };
    const seen = new Set<string>();
    let landedSum = 0;
    for (const row of rows) {
      check.dbSum += row.amount;
      if (!row.name.startsWith(`${tenant}-`)) {
        check.foreign++;
        continue;
      }
      if (row.ref === null) continue; // seeded, amount 0
      seen.add(row.ref);
      if (book.acked.has(row.ref)) continue;
      if (book.uncertain.has(row.ref)) {
        check.landedUncertain++;
        landedSum += row.amount;
      } else {
        check.phantom++;
      }
    }
    for (const [ref, amount] of book.acked) {
      check.ackedSum += amount;
      if (!seen.has(ref)) check.lost++;
    }
    result.tenants.push(check);
    result.lostWrites += check.lost;
    result.foreignRows += check.foreign;
    result.phantomWrites += check.phantom;
    result.landedUncertain += check.landedUncertain;
    if (check.dbSum !== check.ackedSum + landedSum) result.sumMismatches++;
  }
  return result;
}

/** Counts of `client.statuses` as a sorted plain object, for reports. */
export function statusTable(client: LedgerClient): Record<string, number> {
  return Object.fromEntries([...client.statuses].sort(([a], [b]) => a.localeCompare(b)));
}
